//! What the property tests share: random graphs, and the values a sequential evaluation gives them.

use belated_core::TaskId;
use proptest::prelude::*;

/// Each task's value when task `i` adds `i` to the sum of its inputs, evaluated in id order.
pub fn sequential(deps: &[Vec<TaskId>]) -> Vec<i64> {
    let mut out: Vec<i64> = Vec::with_capacity(deps.len());
    for (i, ds) in deps.iter().enumerate() {
        out.push(i as i64 + ds.iter().map(|d| out[d.index()]).sum::<i64>());
    }
    out
}

/// Random DAGs of fewer than `max_tasks` tasks: each depends on up to 4 earlier ones (repeats allowed).
pub fn dags(max_tasks: usize) -> impl Strategy<Value = Vec<Vec<TaskId>>> {
    (1usize..max_tasks).prop_flat_map(|n| {
        (0..n)
            .map(|i| {
                if i == 0 {
                    Just(vec![]).boxed()
                } else {
                    prop::collection::vec((0..i as u32).prop_map(TaskId), 0..4).boxed()
                }
            })
            .collect::<Vec<_>>()
    })
}
