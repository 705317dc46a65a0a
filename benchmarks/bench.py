"""belated and dask side by side, in one run, on the same workloads.

Every measurement runs in a fresh Python process, so that peak memory is that workload's own and no
library warms the other's caches. Workloads (threads scheduler, trivial tasks so that only the engines'
own costs show):

- build, map: ``[f(i) for i in range(N)]``; build, chain: ``x = f(x)`` N times. Time and memory per call
  (memory as resident-set growth divided by N, which sees Rust allocations too).
- compute, map + sum: ``delayed(sum)([inc(i) for i in range(N)])``; tree: pairwise ``add`` of N/2
  leaves; chain: N nested calls. Build and compute times, end to end, per task.
- memory: 1,000 tasks each making a 1 MB array, reduced by a tree of adds (each add makes a new
  array); peak resident memory over the baseline, beside a depth-first sequential evaluation's peak
  (the smallest working set the graph allows).
- progress bar: the tree computed with and without ``diagnostics.ProgressBar``, best of three each,
  alternating, in one process; the bar's cost is the difference.
- dashboard (belated only): map + sum computed with and without ``belated.dashboard()`` open, best of
  three each, alternating, in one process; and the longest heartbeat gap (as below) with it open.
- other threads: the longest wait of a heartbeat thread (a beat, then a 1 ms sleep) while map + sum is
  built and computed: how long the engine keeps other Python threads from the interpreter. CPython's
  own code hands it over every switch interval (5 ms), so about 6 ms is the floor. Also apart: the
  build (user code, as in dask), the compute with the graph's release, two plain Python threads
  calling ``inc`` for as long (CPython's own figure beside a third thread, in the same process), and
  the longest pass of the garbage collector.
- tutorial: ``examples/tutorial.py``'s five examples (the seed's sizes and sleeps, 16 threads), each
  library beside the same sequential code.

Sizes whose run would take more than ``--budget`` seconds, judged from the previous size of the same
workload and its growth, are skipped and shown as such (dask is quadratic on chains and wide fan-ins).

    python benchmarks/bench.py [--quick] [--libs belated,dask] [--budget SECONDS]

``--quick`` uses small sizes and divides the tutorial's sleeps by 10, for a smoke run.

Writes ``benchmarks/results/latest.md`` and ``latest.json``.
"""

import argparse
import contextlib
import gc
import io
import itertools
import json
import operator
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve()


def inc(x):
    return x + 1


def rss_mb():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 1e6


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def build(delayed, shape, n):
    f = delayed(inc)
    if shape == "map":
        return [f(i) for i in range(n)]
    x = delayed(0)
    for _ in range(n):
        x = f(x)
    return x


def graph(delayed, shape, n):
    if shape == "map + sum":
        return delayed(sum)([delayed(inc)(i) for i in range(n)])
    if shape == "chain":
        return build(delayed, "chain", n)
    add = delayed(operator.add)
    layer = [delayed(inc)(i) for i in range(n // 2)]
    while len(layer) > 1:
        layer = [add(*layer[i : i + 2]) if i + 1 < len(layer) else layer[i] for i in range(0, len(layer), 2)]
    return layer[0]


def memory_graph(delayed, np, leaves=1000):
    make = delayed(lambda i: np.ones(131072) * i)
    add = delayed(operator.add)
    layer = [make(i) for i in range(leaves)]
    while len(layer) > 1:
        layer = [add(*layer[i : i + 2]) if i + 1 < len(layer) else layer[i] for i in range(0, len(layer), 2)]
    return layer[0]


def sequential_depth_first(np, lo=0, hi=1000):
    if hi - lo == 1:
        return np.ones(131072) * lo
    mid = (lo + hi) // 2
    return sequential_depth_first(np, lo, mid) + sequential_depth_first(np, mid, hi)


def measure(library, workload, shape, n):
    """Runs in the child process: one measurement, returned as a dict."""
    import importlib

    module = importlib.import_module(library)
    if library == "dask":
        importlib.import_module("dask.delayed")
    delayed = module.delayed
    if workload == "build":
        before = rss_mb()
        start = time.perf_counter()
        built = build(delayed, shape, n)
        seconds = time.perf_counter() - start
        grown = rss_mb() - before
        del built
        return {"seconds": seconds, "bytes_per_call": grown * 1e6 / n}
    if workload == "compute":
        start = time.perf_counter()
        root = graph(delayed, shape, n)
        built = time.perf_counter()
        module.compute(root, scheduler="threads")
        done = time.perf_counter()
        return {"build": built - start, "compute": done - built, "seconds": done - start}
    if workload == "gil":
        return heartbeat_gaps(module, delayed, shape, n)
    if workload == "dashboard":
        return dashboard_overhead(module, shape, n)
    if workload == "progress":
        return progress_overhead(module, importlib.import_module(f"{library}.diagnostics"), shape, n)
    if workload == "tutorial":
        sys.path.insert(0, str(HERE.parents[1] / "examples"))
        import tutorial

        # The tutorial narrates on stdout, which carries this child's answer.
        with contextlib.redirect_stdout(sys.stderr):
            rows, failures = tutorial.run(library, quick=shape == "quick")
        if failures:
            raise SystemExit(f"results differ from sequential Python in: {', '.join(failures)}")
        return {"rows": rows, "seconds": sum(row[2] for row in rows)}
    import numpy as np

    sequential_depth_first(np, 0, 8)
    baseline = rss_mb()
    start = time.perf_counter()
    if shape == "sequential":
        sequential_depth_first(np)
    else:
        module.compute(memory_graph(delayed, np), scheduler="threads")
    return {"seconds": time.perf_counter() - start, "peak_mb": peak_rss_mb() - baseline}


def progress_overhead(module, diagnostics, shape, n, repeats=3):
    root = graph(module.delayed, shape, n)
    plain, watched = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        module.compute(root, scheduler="threads")
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        with diagnostics.ProgressBar(out=io.StringIO()):
            module.compute(root, scheduler="threads")
        watched.append(time.perf_counter() - start)
    return {"seconds": min(plain), "with_bar": min(watched), "overhead": min(watched) / min(plain) - 1}


def dashboard_overhead(module, shape, n, repeats=3):
    root = graph(module.delayed, shape, n)
    plain, watched = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        module.compute(root, scheduler="threads")
        plain.append(time.perf_counter() - start)
        board = module.dashboard(port=0, quiet=True)
        try:
            start = time.perf_counter()
            module.compute(root, scheduler="threads")
            watched.append(time.perf_counter() - start)
        finally:
            board.stop()
    board = module.dashboard(port=0, quiet=True)
    try:
        gap = heartbeat_gaps(module, module.delayed, shape, n)["max_gap_ms"]
    finally:
        board.stop()
    return {
        "seconds": min(plain),
        "with_dashboard": min(watched),
        "overhead": min(watched) / min(plain) - 1,
        "max_gap_ms": gap,
    }


class Heartbeat:
    """A thread that beats, then sleeps 1 ms, until the block ends, and the garbage collector's passes
    meanwhile; ``longest_gap_ms(since, until)`` is the longest time between two beats that overlaps
    that span."""

    def __enter__(self):
        self.beats, self.passes, self._stop = [], [], threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        gc.callbacks.append(self._collecting)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        self.end = time.perf_counter()
        time.sleep(0.01)  # the beat that ends the last gap
        gc.callbacks.remove(self._collecting)
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self):
        while not self._stop.is_set():
            self.beats.append(time.perf_counter())
            time.sleep(0.001)

    def _collecting(self, phase, info):
        if phase == "start":
            self._collection = time.perf_counter()
        else:
            self.passes.append(time.perf_counter() - self._collection)

    def longest_gap_ms(self, since, until):
        pairs = itertools.pairwise(self.beats)
        return max(later - earlier for earlier, later in pairs if later > since and earlier < until) * 1e3

    def longest_collection_ms(self):
        return max(self.passes, default=0.0) * 1e3


def heartbeat_gaps(module, delayed, shape, n):
    """The longest time between two beats of a heartbeat thread while a graph is built, and while it is
    computed and released. Beside it, in the same process: plain Python, two threads calling ``inc`` for
    as long (how long CPython itself keeps a third thread waiting, which a loaded machine lengthens),
    and the longest garbage-collector pass of the build and compute."""
    with Heartbeat() as heartbeat:
        root = graph(delayed, shape, n)
        built = time.perf_counter()
        module.compute(root, scheduler="threads")
        del root
    seconds = heartbeat.end - heartbeat.start

    def call_inc():
        # As long as belated took: the longest gap grows with the time there is to find one in.
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            for i in range(1000):
                inc(i)

    with Heartbeat() as python:
        threads = [threading.Thread(target=call_inc) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
    return {
        "seconds": seconds,
        "max_gap_ms": heartbeat.longest_gap_ms(heartbeat.start, heartbeat.end),
        "build_gap_ms": heartbeat.longest_gap_ms(heartbeat.start, built),
        "compute_gap_ms": heartbeat.longest_gap_ms(built, heartbeat.end),
        "python_gap_ms": python.longest_gap_ms(python.start, python.end),
        "gc_pass_ms": heartbeat.longest_collection_ms(),
    }


def run_child(library, workload, shape, n, timeout):
    command = [sys.executable, str(HERE), "--child", library, workload, shape, str(n)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return json.loads(done.stdout)


def main():
    parser = argparse.ArgumentParser(description="belated and dask side by side")
    parser.add_argument("--libs", default="belated,dask")
    parser.add_argument("--quick", action="store_true", help="small sizes only, for a smoke run")
    parser.add_argument("--budget", type=float, default=60.0, help="skip runs estimated to take longer")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        library, workload, shape, n = options.child
        print(json.dumps(measure(library, workload, shape, int(n))))
        return

    libraries = options.libs.split(",")
    sizes = [1_000, 10_000] if options.quick else [10_000, 100_000, 1_000_000]
    compute_sizes = [1_000, 10_000] if options.quick else [10_000, 100_000]
    plan = [("build", shape, sizes) for shape in ["map", "chain"]]
    plan += [("compute", shape, compute_sizes) for shape in ["map + sum", "tree", "chain"]]
    plan.append(("progress", "tree", compute_sizes))
    # The dashboard is belated's own (dask's is distributed's, another engine): belated's target size.
    plan.append(("dashboard", "map + sum", [10_000] if options.quick else [1_000_000]))
    # dask's threads scheduler beside a heartbeat thread is slow (136 s for 10,000 tasks at load 17), so
    # the small size is what it runs; the large one is the 1M-task compute of belated's target.
    plan.append(("gil", "map + sum", [1_000, 10_000] if options.quick else [1_000, 1_000_000]))
    results = []
    for workload, shape, ns in plan:
        for library in libraries:
            if workload == "dashboard" and library != "belated":
                continue
            previous = None
            for n in ns:
                if previous and previous[1].get("seconds"):
                    # dask is quadratic on chains and wide fan-ins (map + sum), linear elsewhere.
                    seconds, factor = previous[1]["seconds"], n / previous[0]
                    quadratic = library == "dask" and shape in ("chain", "map + sum")
                    # A progress run computes its graph six times.
                    repeats = 6 if workload == "progress" else 1
                    estimate = repeats * seconds * factor ** (2 if quadratic else 1)
                    if estimate > options.budget:
                        skipped = {"error": f"skipped (~{estimate:.0f} s)"}
                        results.append((workload, shape, n, library, skipped))
                        continue
                outcome = run_child(library, workload, shape, n, timeout=options.budget * 3)
                print(workload, shape, n, library, outcome, file=sys.stderr)
                results.append((workload, shape, n, library, outcome))
                previous = (n, outcome) if "error" not in outcome else None
    for library in [*libraries, "sequential"]:
        shape = "sequential" if library == "sequential" else "tree"
        outcome = run_child("belated" if library == "sequential" else library, "memory", shape, 1000, 600)
        print("memory", library, outcome, file=sys.stderr)
        results.append(("memory", shape, 1000, library, outcome))
    pace = "quick" if options.quick else "full"
    for library in libraries:
        outcome = run_child(library, "tutorial", pace, 0, 600)
        print("tutorial", library, outcome, file=sys.stderr)
        results.append(("tutorial", pace, 0, library, outcome))
    report(results, libraries)


def cell(outcome, key, scale, unit, digits=1):
    if "error" in outcome:
        return outcome["error"]
    return f"{outcome[key] * scale:,.{digits}f} {unit}"


def report(results, libraries):
    by = {(w, s, n, lib): o for w, s, n, lib, o in results}
    ours, theirs = libraries[0], libraries[-1]
    lines = [
        f"| workload | N | {ours} | {theirs} | {ours} per task | {theirs} per task | {ours} ÷ {theirs} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    timed = ("build", "compute")
    for workload, shape, n in dict.fromkeys((w, s, n) for w, s, n, _, _ in results if w in timed):
        a, b = by.get((workload, shape, n, ours), {}), by.get((workload, shape, n, theirs), {})
        ratio = f"{a['seconds'] / b['seconds']:.3f}" if "seconds" in a and "seconds" in b else "n/a"
        extra = ""
        if workload == "build":
            extra = " / ".join(
                f"{o['bytes_per_call']:.0f} B/call" if "bytes_per_call" in o else "-" for o in (a, b)
            )
            extra = f" ({extra})"
        lines.append(
            f"| {workload}, {shape}{extra} | {n:,} "
            f"| {cell(a, 'seconds', 1, 's', 3)} | {cell(b, 'seconds', 1, 's', 3)} "
            f"| {cell(a, 'seconds', 1e6 / n, 'µs', 2)} | {cell(b, 'seconds', 1e6 / n, 'µs', 2)} | {ratio} |"
        )
    columns = [*libraries, "sequential"]
    memory = {
        lib: by.get(("memory", "sequential" if lib == "sequential" else "tree", 1000, lib), {})
        for lib in columns
    }
    lines.append("")
    header = " | ".join([*libraries, "sequential depth-first"])
    lines.append(f"| memory: 1,000 arrays of 1 MB, tree of adds | {header} |")
    lines.append("|---|" + "---:|" * (len(libraries) + 1))
    peaks = " | ".join(cell(memory[lib], "peak_mb", 1, "MB", 0) for lib in columns)
    lines.append(f"| peak resident memory over baseline | {peaks} |")
    walls = " | ".join(cell(memory[lib], "seconds", 1, "s", 2) for lib in columns)
    lines.append(f"| wall time | {walls} |")
    lines += progress_table(by, results, libraries)
    lines += dashboard_table(results)
    lines += heartbeat_table(by, results, libraries)
    lines += tutorial_table(results, libraries)
    table = "\n".join(lines)
    print(table)
    out = HERE.parent / "results"
    out.mkdir(exist_ok=True)
    (out / "latest.md").write_text(table + "\n")
    (out / "latest.json").write_text(json.dumps([list(r) for r in results], indent=1))


def progress_table(by, results, libraries):
    lines = ["", f"| ProgressBar, computing a built tree of N tasks | N | {' | '.join(libraries)} |"]
    lines.append("|---|---:|" + "---:|" * len(libraries))
    for n in dict.fromkeys(n for w, _, n, _, _ in results if w == "progress"):
        cells = []
        for library in libraries:
            outcome = by.get(("progress", "tree", n, library), {})
            if "overhead" in outcome:
                seconds, with_bar = outcome["seconds"], outcome["with_bar"]
                cells.append(f"{seconds:.3f} s → {with_bar:.3f} s ({outcome['overhead']:+.1%})")
            else:
                cells.append(outcome.get("error", "n/a"))
        lines.append(f"| without → with the bar (cost) | {n:,} | {' | '.join(cells)} |")
    return lines


def dashboard_table(results):
    rows = [(n, outcome) for w, _, n, _, outcome in results if w == "dashboard"]
    if not rows:
        return []
    header = "without → with (cost) | longest heartbeat gap with it open"
    lines = ["", f"| belated.dashboard() open, computing a built map + sum | N | {header} |"]
    lines.append("|---|---:|---:|---:|")
    for n, outcome in rows:
        if "overhead" in outcome:
            seconds, watched = outcome["seconds"], outcome["with_dashboard"]
            cost = f"{seconds:.3f} s → {watched:.3f} s ({outcome['overhead']:+.1%})"
            lines.append(f"| | {n:,} | {cost} | {outcome['max_gap_ms']:.1f} ms |")
        else:
            lines.append(f"| | {n:,} | {outcome.get('error', 'n/a')} | |")
    return lines


def heartbeat_table(by, results, libraries):
    """The longest gap of the build and compute together, then of each; beside them, plain Python's
    two threads and the longest garbage-collector pass, measured in the same process."""
    parts = ("max_gap_ms", "build_gap_ms", "compute_gap_ms", "python_gap_ms", "gc_pass_ms")
    title = (
        "longest heartbeat gap, map + sum: all / build / compute and release / two Python threads / gc pass"
    )
    lines = ["", f"| {title} | N | {' | '.join(libraries)} |"]
    lines.append("|---|---:|" + "---:|" * len(libraries))
    for n in dict.fromkeys(n for w, _, n, _, _ in results if w == "gil"):
        outcomes = [by.get(("gil", "map + sum", n, lib), {}) for lib in libraries]
        cells = " | ".join(
            " / ".join(f"{outcome[part]:.1f}" for part in parts) + " ms"
            if "max_gap_ms" in outcome
            else outcome.get("error", "n/a")
            for outcome in outcomes
        )
        lines.append(f"| | {n:,} | {cells} |")
    return lines


def tutorial_table(results, libraries):
    runs = {lib: outcome for w, _, _, lib, outcome in results if w == "tutorial"}
    if not runs:
        return []
    ours = runs.get(libraries[0], {})
    gaps = " | ".join(f"{lib} gap to ideal" for lib in libraries)
    lines = ["", f"| tutorial example (16 threads) | sequential | {' | '.join(libraries)} | ideal | {gaps} |"]
    lines.append("|---|---:|" + "---:|" * (2 * len(libraries) + 1))
    for index, (name, sequential, _, ideal) in enumerate(ours.get("rows", [])):
        times, gap_cells = [], []
        for library in libraries:
            rows = runs.get(library, {}).get("rows")
            if rows:
                # Each speedup and gap against the sequential time measured in the same process.
                _, own_sequential, lazy, own_ideal = rows[index]
                times.append(f"{lazy:.2f} s ({own_sequential / lazy:.1f}x)")
                gap_cells.append(f"{1e3 * (lazy - own_ideal):+.0f} ms")
            else:
                times.append(runs.get(library, {}).get("error", "n/a"))
                gap_cells.append("n/a")
        cells = " | ".join([*times, f"{ideal:.2f} s", *gap_cells])
        lines.append(f"| {name} | {sequential:.2f} s | {cells} |")
    return lines


if __name__ == "__main__":
    main()
