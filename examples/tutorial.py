"""The dask.delayed tutorial (shared/seed/dask_delayed_tutorial.txt), run on belated.

Each of its five examples runs twice on the same data: as plain sequential Python, and through
``delayed``. The results must be equal (the script exits non-zero otherwise), and the table shows both
wall times, the speedup, and the gap to the ideal wall time for the threads used.

The seed ran on a cluster of 4 workers x 4 threads; its tasks mostly sleep, so what bounds their
overlap is the number of threads, not cores. We use the same 16 threads (``num_workers=16``) so the
speedups compare, and the ideal is the sleeps' waves on 16 threads. Example 4 parses CSV files, real CPU
work, so it gets one thread per core and its ideal is the sequential time divided by the cores; pandas
holds the GIL while parsing, so threads cannot reach that ideal (processes would).

    python examples/tutorial.py            # the tutorial's sizes and sleeps
    python examples/tutorial.py --quick    # sleeps divided by 10, for tests
    python examples/tutorial.py --module dask   # the same script on dask, for comparison
    python examples/tutorial.py --client        # on the seed's Client(n_workers=4, threads_per_worker=4)
"""

import argparse
import contextlib
import importlib
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

THREADS = 16
CORES = os.cpu_count() or 1


def rounds(tasks):
    """How many waves `tasks` equal independent tasks take on THREADS threads."""
    return -(-tasks // THREADS)


def show(value):
    """The tutorial's ``visualize()`` cells. dask needs Graphviz for them; belated draws by itself."""
    if value is not None and type(value).__module__.startswith("belated"):
        picture = value.visualize(filename=None, format="png")
        print(f"    visualize(): {picture!r}")


def timed(run):
    start = time.perf_counter()
    value = run()
    return time.perf_counter() - start, value


def example_1(dask, nap):
    def square(x):
        time.sleep(nap)
        return x * x

    def sequential():
        return square(3) + square(4)

    def lazy():
        res = dask.delayed(square)(3) + dask.delayed(square)(4)
        print(f"    {res!r}")
        return res.compute(), res

    return sequential, lazy, rounds(2) * nap, "res"


def example_2(dask, nap, rng):
    x = rng.random((10, 1000))

    def corr(a, b):
        time.sleep(nap)
        return np.corrcoef(a, b)[0][1]

    def sequential():
        return np.mean([corr(x[0], row) for row in x])

    def lazy():
        avg_corr = dask.delayed(np.mean)([dask.delayed(corr)(x[0], row) for row in x])
        print(f"    {avg_corr!r}")
        return avg_corr.compute(), avg_corr

    return sequential, lazy, rounds(10) * nap, "avg_corr"


def example_3(dask, nap):
    def square(x):
        time.sleep(nap)
        return x * x

    def power_3(x):
        time.sleep(nap)
        return x * x * x

    def sequential():
        return sum(square(i) if i % 2 == 0 else power_3(i) for i in range(1, 11))

    def lazy():
        lazy_square, lazy_power_3 = dask.delayed(square), dask.delayed(power_3)
        final = [lazy_square(i) if i % 2 == 0 else lazy_power_3(i) for i in range(1, 11)]
        res = dask.delayed(sum)(final)
        print(f"    {res!r}")
        return res.compute(), res

    return sequential, lazy, rounds(10) * nap, "res"


def write_temperatures(folder, rng):
    """The tutorial's 30 days of temperatures, one reading every 5 seconds, one CSV file a day."""
    paths = []
    for day in range(1, 31):
        dates = pd.date_range(start=f"2020-01-{day:02d}", periods=17280, freq="5s")
        frame = pd.DataFrame(rng.integers(1, 50, 17280), index=dates, columns=["Temp"])
        path = os.path.join(folder, f"1-{day}-2020.csv")
        frame.to_csv(path)
        paths.append(path)
    return paths


def example_4(dask, paths):
    def calc_mean(f_name):
        df = pd.read_csv(f_name, index_col=0)
        return df.mean().values[0]

    def sequential():
        return np.mean([calc_mean(path) for path in paths])

    def lazy():
        lazy_mean = dask.delayed(calc_mean)
        avg_temp = dask.delayed(np.mean)([lazy_mean(path) for path in paths])
        print(f"    {avg_temp!r}")
        # CPU-bound work gets one thread per core, dask's default: more threads only contend.
        return avg_temp.compute(num_workers=CORES), None

    return sequential, lazy, None, "avg_temp"


def example_5(dask, nap, rng):
    arrays = [rng.integers(1, 100, 1000) for _ in range(10)]

    def total_func(x):
        time.sleep(nap)
        return sum([i for i in x if i % 2 == 0])

    def count_func(x):
        time.sleep(nap)
        return len([i for i in x if i % 2 == 0])

    def sequential():
        totals = [total_func(x) for x in arrays]
        counts = [count_func(x) for x in arrays]
        return sum(totals) / sum(counts)

    def lazy():
        lazy_total, lazy_count = dask.delayed(total_func), dask.delayed(count_func)
        totals_orig = [lazy_total(x) for x in arrays]
        counts_orig = [lazy_count(x) for x in arrays]
        print(f"    {totals_orig[0]!r} ... {counts_orig[-1]!r}")
        totals, counts = dask.compute(totals_orig, counts_orig)
        return sum(totals) / sum(counts), None

    return sequential, lazy, rounds(20) * nap, "avg_num"


def run(module="belated", quick=False, client=False):
    """Runs the five examples; returns ``(rows, failures)``: per example its name, sequential time, lazy
    time and ideal time, and the names of examples whose results differ from sequential Python."""
    dask = importlib.import_module(module)
    if module == "dask":
        importlib.import_module("dask.delayed")
    nap = 0.1 if quick else 1.0
    rng = np.random.default_rng(2020)
    where = "a local cluster of 4 workers x 4 threads" if client else f"{THREADS} threads"
    print(f"{module} {dask.__version__}, {where}, Python {sys.version.split()[0]}")

    failures = []
    rows = []
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory())
        stack.enter_context(dask.config.set(num_workers=THREADS))
        if client:
            # The seed's optional cell: ``client = Client(n_workers=4, threads_per_worker=4)``.
            started = time.perf_counter()
            cluster = start_client(module)
            stack.enter_context(cluster)
            print(f"    {cluster!r} started in {time.perf_counter() - started:.2f} s")
        paths = write_temperatures(folder, rng)
        examples = [
            ("1: square(3) + square(4)", example_1(dask, nap)),
            ("2: mean correlation", example_2(dask, nap, rng)),
            ("3: squares and cubes", example_3(dask, nap)),
            ("4: 30 CSV files", example_4(dask, paths)),
            ("5: compute(totals, counts)", example_5(dask, nap / 2, rng)),
        ]
        for name, (sequential, lazy, ideal, result_name) in examples:
            print(f"Example {name}")
            sequential_time, expected = timed(sequential)
            lazy_time, (got, drawable) = timed(lazy)
            show(drawable)
            if ideal is None:
                ideal = sequential_time / CORES
            same = got == expected
            verdict = "equal to" if same else "DIFFERENT FROM"
            print(f"    {result_name} = {got!r} ({verdict} sequential {expected!r})")
            if not same:
                failures.append(name)
            rows.append((name, sequential_time, lazy_time, ideal))
    return rows, failures


def start_client(module):
    if module == "dask":
        from dask.distributed import Client

        return Client(n_workers=4, threads_per_worker=4, dashboard_address=None)
    import belated

    return belated.Client(n_workers=4, threads_per_worker=4)


def main():
    parser = argparse.ArgumentParser(description="The dask.delayed tutorial on belated (or dask).")
    parser.add_argument("--module", default="belated", choices=["belated", "dask"])
    parser.add_argument("--quick", action="store_true", help="divide the sleeps by 10")
    parser.add_argument(
        "--client",
        action="store_true",
        help="run on a local cluster, Client(n_workers=4, threads_per_worker=4)",
    )
    options = parser.parse_args()
    rows, failures = run(options.module, options.quick, options.client)
    print()
    print(f"| example | sequential | {options.module} | speedup | ideal | gap to ideal |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, sequential_time, lazy_time, ideal in rows:
        print(
            f"| {name} | {sequential_time:.2f} s | {lazy_time:.2f} s | {sequential_time / lazy_time:.1f}x "
            f"| {ideal:.2f} s | {1e3 * (lazy_time - ideal):+.0f} ms |"
        )
    if failures:
        print(f"results differ from sequential Python in: {', '.join(failures)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
