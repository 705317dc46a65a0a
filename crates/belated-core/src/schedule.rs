//! The scheduling policy as a deterministic state machine, with no threads or values in it.
//!
//! Policy:
//! - Among ready tasks the smallest id runs first. Ids are a depth-first post-order from the outputs, so
//!   this finishes the branch in progress before opening a new one, the way a sequential evaluation
//!   would, which keeps the number of live intermediate results close to the graph's width rather than
//!   its size (the same aim as dask.order).
//! - A result is released the moment its last dependent finishes, unless it is an output.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::{Graph, TaskId};

#[derive(Debug)]
pub struct Schedule {
    unfinished_deps: Vec<u32>,
    unfinished_dependents: Vec<u32>,
    is_output: Vec<bool>,
    ready: BinaryHeap<Reverse<TaskId>>,
    unfinished: usize,
}

impl Schedule {
    pub fn new(graph: &Graph, outputs: &[TaskId]) -> Self {
        let mut is_output = vec![false; graph.len()];
        for output in outputs {
            is_output[output.index()] = true;
        }
        let unfinished_deps: Vec<u32> = graph.tasks().map(|t| graph.deps(t).len() as u32).collect();
        let ready = graph
            .tasks()
            .filter(|t| unfinished_deps[t.index()] == 0)
            .map(Reverse)
            .collect();
        Schedule {
            unfinished_dependents: graph
                .tasks()
                .map(|t| graph.dependents(t).len() as u32)
                .collect(),
            unfinished_deps,
            is_output,
            ready,
            unfinished: graph.len(),
        }
    }

    /// Takes the ready task with the highest priority; the caller must [`Schedule::finish`] it.
    pub fn next_ready(&mut self) -> Option<TaskId> {
        self.ready.pop().map(|Reverse(task)| task)
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn is_finished(&self) -> bool {
        self.unfinished == 0
    }

    /// Records that `task` ran: its dependents may become ready, and `release` is called for every input
    /// that no unfinished task needs any more.
    pub fn finish(&mut self, graph: &Graph, task: TaskId, mut release: impl FnMut(TaskId)) {
        self.unfinished -= 1;
        for &dependent in graph.dependents(task) {
            let waiting = &mut self.unfinished_deps[dependent.index()];
            *waiting -= 1;
            if *waiting == 0 {
                self.ready.push(Reverse(dependent));
            }
        }
        for &dep in graph.deps(task) {
            let pending = &mut self.unfinished_dependents[dep.index()];
            *pending -= 1;
            if *pending == 0 && !self.is_output[dep.index()] {
                release(dep);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(leaves: u32) -> (Graph, TaskId) {
        // Pairwise reduction laid out the way Plan::flatten would: post-order.
        fn build(lo: u32, hi: u32, deps: &mut Vec<Vec<TaskId>>) -> TaskId {
            if hi - lo == 1 {
                deps.push(vec![]);
            } else {
                let mid = (lo + hi) / 2;
                let left = build(lo, mid, deps);
                let right = build(mid, hi, deps);
                deps.push(vec![left, right]);
            }
            TaskId((deps.len() - 1) as u32)
        }
        let mut deps = Vec::new();
        let root = build(0, leaves, &mut deps);
        (Graph::from_deps::<(), _, _>(deps).unwrap(), root)
    }

    #[test]
    fn sequential_run_of_a_tree_keeps_only_a_path_alive() {
        let (graph, root) = tree(1024);
        let mut schedule = Schedule::new(&graph, &[root]);
        let (mut live, mut peak, mut order) = (0i64, 0i64, vec![]);
        while let Some(task) = schedule.next_ready() {
            order.push(task);
            live += 1;
            peak = peak.max(live);
            schedule.finish(&graph, task, |_| live -= 1);
        }
        assert!(schedule.is_finished());
        assert_eq!(live, 1, "only the output stays");
        assert!(peak <= 12, "peak {peak} live results for a depth-10 tree");
        assert_eq!(order, graph.tasks().collect::<Vec<_>>());
    }

    #[test]
    fn outputs_are_never_released_even_when_they_feed_other_tasks() {
        let graph = Graph::from_deps::<(), _, _>([vec![], vec![TaskId(0)]]).unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(0), TaskId(1)]);
        let mut released = vec![];
        while let Some(task) = schedule.next_ready() {
            schedule.finish(&graph, task, |t| released.push(t));
        }
        assert!(released.is_empty());
    }

    #[test]
    fn repeated_inputs_release_once_after_the_last_use() {
        let graph =
            Graph::from_deps::<(), _, _>([vec![], vec![TaskId(0), TaskId(0)], vec![TaskId(0)]])
                .unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(1), TaskId(2)]);
        let mut released = vec![];
        while let Some(task) = schedule.next_ready() {
            schedule.finish(&graph, task, |t| released.push((task, t)));
        }
        assert_eq!(released, vec![(TaskId(2), TaskId(0))]);
    }

    #[test]
    fn a_task_becomes_ready_only_when_all_its_inputs_finished() {
        let graph =
            Graph::from_deps::<(), _, _>([vec![], vec![], vec![TaskId(0), TaskId(1)]]).unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(2)]);
        assert_eq!(schedule.ready_len(), 2);
        let first = schedule.next_ready().unwrap();
        schedule.finish(&graph, first, |_| {});
        assert_eq!(schedule.next_ready(), Some(TaskId(1)));
        assert_eq!(schedule.next_ready(), None);
        schedule.finish(&graph, TaskId(1), |_| {});
        assert_eq!(schedule.next_ready(), Some(TaskId(2)));
    }
}
