//! One map+reduce of `n` trivial tasks, built, computed and dropped once: the workload behind the
//! README's per-task instruction counts. Instruction counts are deterministic where wall-clock times
//! on a loaded machine are not, so compare builds with them:
//!
//! ```text
//! cargo build --release -p belated --example instructions
//! valgrind --tool=callgrind target/release/examples/instructions 100000
//! valgrind --tool=callgrind target/release/examples/instructions 1
//! ```
//!
//! The difference of the two totals over 99,999 is what one task costs, from its `delayed` call to
//! its node's drop. Add `pool` after the size to compute on the default pool instead of inline (its
//! idle workers' spinning makes that count vary from run to run).

use std::hint::black_box;

use belated::{delayed, Delayed, Options};

fn main() {
    let mut args = std::env::args().skip(1);
    let tasks: u64 = args
        .next()
        .map_or(100_000, |n| n.parse().expect("a number of tasks"));
    let options = match args.next().as_deref() {
        Some("pool") => Options::new(),
        _ => Options::inline(),
    };
    let inc = delayed(|i: u64| black_box(i).wrapping_add(1));
    let parts: Vec<Delayed<u64>> = (0..tasks.saturating_sub(1)).map(|i| inc.call(i)).collect();
    let total = delayed(|parts: Vec<u64>| parts.into_iter().fold(0, u64::wrapping_add)).call(parts);
    black_box(total.compute_with(&options).expect("the graph computes"));
}
