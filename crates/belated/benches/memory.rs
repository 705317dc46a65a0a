//! Big values through a graph: time and peak heap of belated against the same graph over `Arc`s and
//! against rayon, in one run: `cargo bench -p belated --bench memory` (add `-- --quick` for fewer runs).
//!
//! - chain: a 256 MB `Vec<u8>` made by one task, then four maps that each add 1 to every byte. A value
//!   moves to its last consumer, so each map gets the buffer itself, not a copy.
//! - fan-in: 300 tasks each make 1 MB; one task takes all 300 and sums their bytes.
//! - readers: one task makes 256 MB, four tasks each sum its bytes. By value, the three readers that
//!   start before the last one get a copy.
//!
//! Three ways to write each graph: plain `Vec<u8>` values taken by value; the same `Vec<u8>` values
//! taken by tasks whose parameters are `Arc<Vec<u8>>` (shared with the task, so a reader never copies
//! and a map at the last use mutates in place with `Arc::make_mut`); and graphs whose values are
//! `Arc<Vec<u8>>` themselves (the workaround when values were cloned for every consumer). Peak heap
//! is measured by a counting global allocator, from the start of a run; times are medians with the
//! fastest and slowest run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use belated::{delayed, Delayed};
use rayon::prelude::*;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: `ptr` was allocated by `System` with this layout (every allocation goes through it).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(live, Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const MB: usize = 1 << 20;

/// Time and peak heap above the starting level of `runs` runs of `f`, after a warm-up run; checks
/// every run returns `expect`.
fn measure(runs: usize, expect: u64, mut f: impl FnMut() -> u64) -> (Vec<Duration>, usize) {
    assert_eq!(f(), expect);
    let mut peak = 0;
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let base = LIVE.load(Relaxed);
            PEAK.store(base, Relaxed);
            let started = Instant::now();
            let value = f();
            let elapsed = started.elapsed();
            assert_eq!(value, expect);
            peak = peak.max(PEAK.load(Relaxed) - base);
            elapsed
        })
        .collect();
    times.sort();
    (times, peak)
}

fn show((times, peak): &(Vec<Duration>, usize)) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{:.0} ({:.0}–{:.0}) ms, {} MB",
        ms(times[times.len() / 2]),
        ms(times[0]),
        ms(times[times.len() - 1]),
        peak / MB
    )
}

fn ratio(a: &(Vec<Duration>, usize), b: &(Vec<Duration>, usize)) -> String {
    let median = |t: &Vec<Duration>| t[t.len() / 2].as_secs_f64();
    format!(
        "{:.2}× time, {:.2}× peak",
        median(&a.0) / median(&b.0),
        a.1 as f64 / b.1 as f64
    )
}

fn increment(bytes: &mut [u8]) {
    for byte in bytes {
        *byte = byte.wrapping_add(1);
    }
}

fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().map(|&b| b as u64).sum()
}

/// One table row: the three belated forms and rayon, and the by-value form against the `Arc` values.
fn row(name: &str, [moved, params, values, rayon]: [(Vec<Duration>, usize); 4]) {
    println!(
        "| {name} | {} | {} | {} | {} | {} |",
        show(&moved),
        show(&params),
        show(&values),
        show(&rayon),
        ratio(&moved, &values)
    );
}

/// A map for the `Arc` parameter form: in place when the task holds the only handle.
fn increment_shared(mut v: Arc<Vec<u8>>) -> Vec<u8> {
    increment(Arc::<Vec<u8>>::make_mut(&mut v));
    Arc::unwrap_or_clone(v)
}

fn chain(runs: usize) {
    const SIZE: usize = 256 * MB;
    let expect = 5 * SIZE as u64;
    let moved = measure(runs, expect, || {
        let mut x = delayed(|| vec![1u8; SIZE]).call();
        for _ in 0..4 {
            x = x.map(|mut v: Vec<u8>| {
                increment(&mut v);
                v
            });
        }
        x.map(|v: Vec<u8>| checksum(&v)).compute().unwrap()
    });
    let params = measure(runs, expect, || {
        let step = delayed(increment_shared);
        let x = (0..4).fold(delayed(|| vec![1u8; SIZE]).call(), |x, _| step.call(x));
        delayed(|v: Arc<Vec<u8>>| checksum(&v))
            .call(x)
            .compute()
            .unwrap()
    });
    let shared = measure(runs, expect, || {
        let mut x = delayed(|| Arc::new(vec![1u8; SIZE])).call();
        for _ in 0..4 {
            x = x.map(|mut v: Arc<Vec<u8>>| {
                increment(Arc::<Vec<u8>>::make_mut(&mut v));
                v
            });
        }
        x.map(|v: Arc<Vec<u8>>| checksum(&v)).compute().unwrap()
    });
    let rayon = measure(runs, expect, || {
        let mut v = vec![1u8; SIZE];
        for _ in 0..4 {
            v.par_chunks_mut(MB).for_each(increment);
        }
        v.par_chunks(MB).map(checksum).sum()
    });
    row(
        "chain of 4 maps, 256 MB `Vec<u8>`",
        [moved, params, shared, rayon],
    );
}

fn fan_in(runs: usize) {
    const PARTS: usize = 300;
    let expect: u64 = (0..PARTS).map(|i| (i % 256 * MB) as u64).sum();
    let moved = measure(runs, expect, || {
        let make = delayed(|i: usize| vec![(i % 256) as u8; MB]);
        let parts: Vec<Delayed<Vec<u8>>> = (0..PARTS).map(|i| make.call(i)).collect();
        let sum = delayed(|parts: Vec<Vec<u8>>| parts.iter().map(|p| checksum(p)).sum::<u64>());
        sum.call(parts).compute().unwrap()
    });
    let params = measure(runs, expect, || {
        let make = delayed(|i: usize| vec![(i % 256) as u8; MB]);
        let parts: Vec<Delayed<Vec<u8>>> = (0..PARTS).map(|i| make.call(i)).collect();
        let sum =
            delayed(|parts: Vec<Arc<Vec<u8>>>| parts.iter().map(|p| checksum(p)).sum::<u64>());
        sum.call(parts).compute().unwrap()
    });
    let shared = measure(runs, expect, || {
        let make = delayed(|i: usize| Arc::new(vec![(i % 256) as u8; MB]));
        let parts: Vec<Delayed<Arc<Vec<u8>>>> = (0..PARTS).map(|i| make.call(i)).collect();
        let sum =
            delayed(|parts: Vec<Arc<Vec<u8>>>| parts.iter().map(|p| checksum(p)).sum::<u64>());
        sum.call(parts).compute().unwrap()
    });
    let rayon = measure(runs, expect, || {
        let parts: Vec<Vec<u8>> = (0..PARTS)
            .into_par_iter()
            .map(|i| vec![(i % 256) as u8; MB])
            .collect();
        parts.iter().map(|p| checksum(p)).sum()
    });
    row("fan-in of 300 × 1 MB", [moved, params, shared, rayon]);
}

fn readers(runs: usize) {
    const SIZE: usize = 256 * MB;
    const READERS: u64 = 4;
    let expect = READERS * SIZE as u64;
    let moved = measure(runs, expect, || {
        let data = delayed(|| vec![1u8; SIZE]).call();
        let sums = (0..READERS).map(|_| data.map(|v: Vec<u8>| checksum(&v)));
        sums.sum::<Delayed<u64>>().compute().unwrap()
    });
    let params = measure(runs, expect, || {
        let data = delayed(|| vec![1u8; SIZE]).call();
        let read = delayed(|v: Arc<Vec<u8>>| checksum(&v));
        let sums = (0..READERS).map(|_| read.call(&data));
        sums.sum::<Delayed<u64>>().compute().unwrap()
    });
    let shared = measure(runs, expect, || {
        let data = delayed(|| Arc::new(vec![1u8; SIZE])).call();
        let sums = (0..READERS).map(|_| data.map(|v: Arc<Vec<u8>>| checksum(&v)));
        sums.sum::<Delayed<u64>>().compute().unwrap()
    });
    let rayon = measure(runs, expect, || {
        let v = vec![1u8; SIZE];
        (0..READERS).into_par_iter().map(|_| checksum(&v)).sum()
    });
    row(
        "4 readers of one 256 MB `Vec<u8>`",
        [moved, params, shared, rayon],
    );
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runs = if quick { 3 } else { 7 };
    println!(
        "big values: time (median, min–max of {runs} runs) and peak heap; {} cores\n",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| graph | belated, by value | belated, `Arc<T>` parameters | belated, `Arc<Vec>` values | rayon | by value / `Arc` values |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    chain(runs);
    fan_in(runs);
    readers(runs);
    black_box(());
}
