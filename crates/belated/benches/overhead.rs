//! Per-task overhead of belated against rayon and plain sequential code, on the same graph shapes, in
//! one run: `cargo bench -p belated --bench overhead` (add `-- --quick` for fewer repetitions).
//!
//! Three tables:
//! - Every task does almost nothing (one `black_box`ed add), so a column's time minus the sequential
//!   time, divided by the number of tasks, is what the framework costs per task. belated is measured
//!   in two phases, building the graph (`delayed` calls) and computing it (flatten, schedule, run,
//!   collect), inline on the calling thread and on the default pool (one thread per core).
//! - map+reduce with 1 µs and 10 µs of work per task, end to end (build and compute), against
//!   rayon's `par_iter`: the ratio is what the targets are stated in.
//! - A tiny graph, `square(3) + square(4)`, end to end, against inline and `rayon::join`.
//!
//! Times are medians of several runs, with the fastest and slowest run in brackets; per-task costs
//! come from the medians.
//!
//! A plain `harness = false` timer rather than criterion or divan: those take minutes to compile on a
//! 2-core machine, and what this needs — medians of a few runs of three frameworks side by side, in a
//! table for the README — is twenty lines of `Instant`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use belated::{delayed, Delayed, Options};

fn inc(x: u64) -> u64 {
    black_box(x).wrapping_add(1)
}

fn add(a: u64, b: u64) -> u64 {
    black_box(a).wrapping_add(b)
}

/// The timings of `runs` runs of `f`, after one warm-up run; checks every run returns `expect`.
fn timings(runs: usize, expect: u64, mut f: impl FnMut() -> u64) -> Timings {
    assert_eq!(f(), expect);
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let value = f();
            let elapsed = started.elapsed();
            assert_eq!(value, expect);
            elapsed
        })
        .collect();
    times.sort();
    Timings(times)
}

/// Sorted run times.
struct Timings(Vec<Duration>);

impl Timings {
    fn median(&self) -> Duration {
        self.0[self.0.len() / 2]
    }

    /// `median (min–max)` in `unit`s of seconds, e.g. 1e-3 for ms.
    fn spread(&self, unit: f64, scale: f64) -> String {
        let show = |d: Duration| d.as_secs_f64() / unit / scale;
        let (min, max) = (self.0[0], self.0[self.0.len() - 1]);
        format!(
            "{:.2} ({:.2}–{:.2})",
            show(self.median()),
            show(min),
            show(max)
        )
    }
}

/// One graph shape in every framework: `tasks` is how many tasks the belated graph has.
struct Shape {
    name: &'static str,
    tasks: usize,
    sequential: Box<dyn Fn() -> u64>,
    rayon: Option<Box<dyn Fn() -> u64>>,
    build: Box<dyn Fn() -> Delayed<u64>>,
}

fn map_reduce(n: usize) -> Shape {
    let maps = n as u64 - 1;
    Shape {
        name: "map+reduce",
        tasks: n,
        sequential: Box::new(move || (0..maps).map(inc).fold(0, add)),
        rayon: Some(Box::new(move || {
            let mut out = vec![0u64; maps as usize];
            rayon::scope(|s| {
                for (i, slot) in out.iter_mut().enumerate() {
                    s.spawn(move |_| *slot = inc(i as u64));
                }
            });
            out.into_iter().fold(0, add)
        })),
        build: Box::new(move || {
            let inc = delayed(inc);
            (0..maps).map(|i| inc.call(i)).sum()
        }),
    }
}

fn tree(n: usize) -> Shape {
    let leaves = n.div_ceil(2) as u64;
    fn sequential(lo: u64, hi: u64) -> u64 {
        if hi - lo == 1 {
            return inc(lo);
        }
        let mid = (lo + hi) / 2;
        add(sequential(lo, mid), sequential(mid, hi))
    }
    fn joined(lo: u64, hi: u64) -> u64 {
        if hi - lo == 1 {
            return inc(lo);
        }
        let mid = (lo + hi) / 2;
        let (a, b) = rayon::join(|| joined(lo, mid), || joined(mid, hi));
        add(a, b)
    }
    fn build(
        inc: &belated::DelayedFn<fn(u64) -> u64, (u64,), u64>,
        lo: u64,
        hi: u64,
    ) -> Delayed<u64> {
        if hi - lo == 1 {
            return inc.call(lo);
        }
        let mid = (lo + hi) / 2;
        build(inc, lo, mid) + build(inc, mid, hi)
    }
    Shape {
        name: "binary tree",
        tasks: 2 * leaves as usize - 1,
        sequential: Box::new(move || sequential(0, leaves)),
        rayon: Some(Box::new(move || joined(0, leaves))),
        build: Box::new(move || build(&delayed(inc as fn(u64) -> u64), 0, leaves)),
    }
}

fn chain(n: usize) -> Shape {
    let links = n as u64 - 1;
    Shape {
        name: "chain",
        tasks: n,
        sequential: Box::new(move || (0..links).fold(0, |x, _| inc(x))),
        // A chain has no parallelism; in rayon it is the sequential loop.
        rayon: None,
        build: Box::new(move || {
            let inc = delayed(inc);
            (0..links).fold(Delayed::value(0u64), |x, _| inc.call(x))
        }),
    }
}

/// Busy work: `iterations` dependent multiply-adds that the optimizer cannot drop.
fn spin(iterations: u64) -> u64 {
    let mut x = black_box(1u64);
    for i in 0..iterations {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
    }
    x
}

/// How many [`spin`] iterations take about one microsecond here.
fn iterations_per_micro() -> u64 {
    let probe = 20_000_000;
    let started = Instant::now();
    black_box(spin(probe));
    (probe as f64 / (started.elapsed().as_secs_f64() * 1e6)).max(1.0) as u64
}

/// map+reduce over `tasks` tasks of `micros` µs of work each, end to end, against rayon's `par_iter`.
fn work_table(runs: usize) {
    use rayon::prelude::*;
    let per_micro = iterations_per_micro();
    println!("\nmap+reduce with work per task, end to end (build + compute); ms, median (min–max) of {runs} runs\n");
    println!("| work per task | tasks | sequential | rayon `par_iter` | belated pool | belated / rayon |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for (micros, tasks) in [(1u64, 20_000u64), (10, 5_000)] {
        let iterations = micros * per_micro;
        let work = move |i: u64| spin(iterations).wrapping_add(i);
        let expect = (0..tasks).map(work).fold(0, u64::wrapping_add);
        let sequential = timings(runs, expect, || {
            (0..tasks).map(work).fold(0, u64::wrapping_add)
        });
        let rayon = timings(runs, expect, || {
            (0..tasks)
                .into_par_iter()
                .map(work)
                .reduce(|| 0, u64::wrapping_add)
        });
        let belated = timings(runs, expect, || {
            let work = delayed(move |i: u64| work(i));
            let parts: Vec<Delayed<u64>> = (0..tasks).map(|i| work.call(i)).collect();
            let total = delayed(|parts: Vec<u64>| parts.into_iter().fold(0, u64::wrapping_add));
            total.call(parts).compute().unwrap()
        });
        println!(
            "| {micros} µs | {tasks} | {} | {} | {} | {:.2}× |",
            sequential.spread(1e-3, 1.0),
            rayon.spread(1e-3, 1.0),
            belated.spread(1e-3, 1.0),
            belated.median().as_secs_f64() / rayon.median().as_secs_f64()
        );
    }
}

/// `square(3) + square(4)`, end to end, many times per timing.
fn tiny_table(runs: usize) {
    fn square(x: u64) -> u64 {
        black_box(x) * x
    }
    const REPEAT: u32 = 10_000;
    let per_call =
        |f: &dyn Fn() -> u64| timings(runs, 25 * REPEAT as u64, || (0..REPEAT).map(|_| f()).sum());
    let sequential = per_call(&|| square(3) + square(4));
    let joined = per_call(&|| {
        let (a, b) = rayon::join(|| square(3), || square(4));
        a + b
    });
    let graph = |options: &Options| {
        let square = delayed(square);
        (square.call(3) + square.call(4))
            .compute_with(options)
            .unwrap()
    };
    let (inline, pool) = (Options::inline(), Options::new());
    let on_inline = per_call(&|| graph(&inline));
    let on_pool = per_call(&|| graph(&pool));
    println!("\ntiny graph `square(3) + square(4)`, end to end (build + compute); µs per graph, median (min–max) of {runs} runs of {REPEAT}\n");
    println!("| sequential | `rayon::join` | belated inline | belated pool (default options) |");
    println!("|---:|---:|---:|---:|");
    let show = |t: &Timings| t.spread(1e-6, REPEAT as f64);
    println!(
        "| {} | {} | {} | {} |",
        show(&sequential),
        show(&joined),
        show(&on_inline),
        show(&on_pool)
    );
}

fn per_task(total: Duration, baseline: Duration, tasks: usize) -> f64 {
    (total.as_secs_f64() - baseline.as_secs_f64()).max(0.0) * 1e9 / tasks as f64
}

fn main() {
    // `cargo bench` passes `--bench`; anything else it forwards after `--`.
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 3 } else { 9 };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "belated per-task overhead, {threads} cores, rayon with {} threads; ms, median (min–max) of {runs} runs\n",
        rayon::current_num_threads()
    );
    println!(
        "| shape | tasks | sequential | rayon | belated build | belated compute inline | belated compute pool | \
         ns/task rayon | ns/task build | ns/task inline | ns/task pool |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let inline = Options::inline();
    let pool = Options::new();
    for n in [10_000, 100_000] {
        for shape in [map_reduce(n), tree(n), chain(n)] {
            let expect = (shape.sequential)();
            let sequential = timings(runs, expect, &shape.sequential);
            let rayon = shape.rayon.as_ref().map(|f| timings(runs, expect, f));
            let build = timings(runs, 0, || {
                black_box((shape.build)());
                0
            });
            let graph = (shape.build)();
            let compute_inline = timings(runs, expect, || graph.compute_with(&inline).unwrap());
            let compute_pool = timings(runs, expect, || graph.compute_with(&pool).unwrap());
            let ms = |t: &Timings| t.spread(1e-3, 1.0);
            let per_task = |t: &Timings, baseline: Duration| {
                format!("{:.0}", per_task(t.median(), baseline, shape.tasks))
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                shape.name,
                shape.tasks,
                ms(&sequential),
                rayon.as_ref().map_or("n/a".into(), ms),
                ms(&build),
                ms(&compute_inline),
                ms(&compute_pool),
                rayon
                    .as_ref()
                    .map_or("n/a".into(), |r| per_task(r, sequential.median())),
                per_task(&build, Duration::ZERO),
                per_task(&compute_inline, sequential.median()),
                per_task(&compute_pool, sequential.median()),
            );
        }
    }
    work_table(runs);
    tiny_table(runs);
}
