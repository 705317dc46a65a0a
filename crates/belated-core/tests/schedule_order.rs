//! The schedule hands out the smallest ready id, whichever way the task became ready: ready from the
//! start or made ready since, in any interleaving of starts and finishes.

use std::collections::BTreeSet;

use belated_core::{Graph, Schedule, TaskId};
use proptest::prelude::*;

/// Random DAGs, each task depending on up to 3 earlier ones, and a stream of choices of how many
/// tasks to hold running before finishing one, and which of them finishes.
fn dags_and_choices() -> impl Strategy<Value = (Vec<Vec<TaskId>>, Vec<(usize, usize)>)> {
    (1usize..80).prop_flat_map(|n| {
        let deps = (0..n)
            .map(|i| match i {
                0 => Just(vec![]).boxed(),
                _ => prop::collection::vec((0..i as u32).prop_map(TaskId), 0..3).boxed(),
            })
            .collect::<Vec<_>>();
        (deps, prop::collection::vec((1usize..5, 0usize..5), 2 * n))
    })
}

proptest! {
    #[test]
    fn the_smallest_ready_task_comes_first((deps, choices) in dags_and_choices()) {
        let graph = Graph::from_deps::<(), _, _>(deps.clone()).unwrap();
        let outputs = vec![TaskId(deps.len() as u32 - 1)];
        let mut schedule = Schedule::new(&graph, &outputs, 1);
        let mut unfinished_deps: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut ready: BTreeSet<TaskId> =
            graph.tasks().filter(|t| unfinished_deps[t.index()] == 0).collect();
        let mut running: Vec<TaskId> = Vec::new();
        let mut choices = choices.into_iter().cycle();
        let mut finished = 0;
        while finished < deps.len() {
            let (hold, pick) = choices.next().unwrap();
            while running.len() < hold {
                let Some(task) = schedule.next_ready(None) else { break };
                prop_assert_eq!(Some(task), ready.pop_first());
                schedule.start(&graph, task, |_, _| {});
                running.push(task);
            }
            prop_assert_eq!(schedule.ready_len(), ready.len());
            prop_assert!(!running.is_empty(), "nothing ready, nothing running, work left");
            let task = running.swap_remove(pick % running.len());
            schedule.finish(&graph, task, |_| None, |_| {});
            finished += 1;
            for &dependent in graph.dependents(task) {
                unfinished_deps[dependent.index()] -= 1;
                if unfinished_deps[dependent.index()] == 0 {
                    ready.insert(dependent);
                }
            }
        }
        prop_assert!(schedule.is_finished());
    }
}
