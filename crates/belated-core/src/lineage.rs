//! What to recompute when results were lost with a worker: a policy, with no I/O, used by the
//! schedule when a task finds its inputs gone ([`crate::recovery`]).
//!
//! Policy: a lost result is rebuilt from its lineage, back to the results still available (held
//! somewhere, or able to be rebuilt without running anything); each task of that lineage runs once,
//! its inputs before it, so a shared input is recomputed once for all its consumers.

use rustc_hash::FxHashSet;

use crate::graph::{Graph, TaskId};

/// The tasks to run, inputs first, so that `lost` is computed again: `lost` itself and every task of
/// its lineage that is not `available`, each once. Iterative, so a lineage of any depth is fine.
pub fn recompute_order(
    graph: &Graph,
    lost: TaskId,
    mut available: impl FnMut(TaskId) -> bool,
) -> Vec<TaskId> {
    let mut order = Vec::new();
    let mut seen = FxHashSet::default();
    seen.insert(lost);
    // Each entry is a task and how many of its inputs were looked at.
    let mut stack = vec![(lost, 0usize)];
    while let Some((task, next)) = stack.last_mut() {
        let task = *task;
        match graph.deps(task).get(*next) {
            Some(&dep) => {
                *next += 1;
                if seen.insert(dep) && !available(dep) {
                    stack.push((dep, 0));
                }
            }
            None => {
                stack.pop();
                order.push(task);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn graph(deps: &[&[u32]]) -> Graph {
        Graph::from_deps::<(), _, _>(
            deps.iter()
                .map(|list| list.iter().map(|&d| TaskId(d)).collect::<Vec<_>>()),
        )
        .expect("a valid graph")
    }

    fn ids(order: &[TaskId]) -> Vec<u32> {
        order.iter().map(|t| t.0).collect()
    }

    #[test]
    fn a_chain_is_recomputed_back_to_the_first_available_result() {
        // 0 <- 1 <- 2 <- 3, with 1 still held.
        let chain = graph(&[&[], &[0], &[1], &[2]]);
        assert_eq!(
            ids(&recompute_order(&chain, TaskId(3), |t| t == TaskId(1))),
            [2, 3]
        );
        assert_eq!(
            ids(&recompute_order(&chain, TaskId(3), |_| false)),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn a_shared_input_is_recomputed_once() {
        // 0 feeds 1 and 2, which both feed 3.
        let diamond = graph(&[&[], &[0], &[0], &[1, 2]]);
        assert_eq!(
            ids(&recompute_order(&diamond, TaskId(3), |_| false)),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn availability_is_asked_once_per_input() {
        let diamond = graph(&[&[], &[0], &[0], &[1, 2, 0]]);
        let mut asked = Vec::new();
        recompute_order(&diamond, TaskId(3), |t| {
            asked.push(t.0);
            false
        });
        asked.sort_unstable();
        assert_eq!(asked, [0, 1, 2]);
    }

    #[test]
    fn a_deep_lineage_needs_no_recursion() {
        let deps: Vec<Vec<TaskId>> = (0..200_000u32)
            .map(|i| if i == 0 { vec![] } else { vec![TaskId(i - 1)] })
            .collect();
        let chain = Graph::from_deps::<(), _, _>(deps).expect("a chain");
        assert_eq!(
            recompute_order(&chain, TaskId(199_999), |_| false).len(),
            200_000
        );
    }

    fn random_graph() -> impl Strategy<Value = (Vec<Vec<u32>>, Vec<bool>)> {
        (1usize..40).prop_flat_map(|n| {
            let deps = (0..n)
                .map(|i| {
                    proptest::collection::vec(0..i.max(1) as u32, 0..3.min(i + 1))
                        .prop_map(move |d| if i == 0 { vec![] } else { d })
                })
                .collect::<Vec<_>>();
            (deps, proptest::collection::vec(any::<bool>(), n))
        })
    }

    proptest! {
        #[test]
        fn the_order_rebuilds_lost_from_available_results_inputs_first((deps, held) in random_graph()) {
            let graph = Graph::from_deps::<(), _, _>(
                deps.iter().map(|d| d.iter().map(|&x| TaskId(x)).collect::<Vec<_>>()),
            ).expect("deps point backwards");
            let lost = TaskId(deps.len() as u32 - 1);
            let order = recompute_order(&graph, lost, |t| held[t.index()]);
            prop_assert_eq!(order.last().copied(), Some(lost));
            let mut done = FxHashSet::default();
            for &task in &order {
                prop_assert!(task == lost || !held[task.index()], "an available result is not rerun");
                for dep in graph.deps(task) {
                    prop_assert!(done.contains(dep) || held[dep.index()], "inputs come first");
                }
                prop_assert!(done.insert(task), "each task runs once");
            }
        }
    }
}
