//! The scheduling policy as a deterministic state machine, with no threads or values in it.
//!
//! Policy:
//! - Among ready tasks the smallest id runs first. Ids are a depth-first post-order from the outputs, so
//!   this finishes the branch in progress before opening a new one, the way a sequential evaluation
//!   would, which keeps the number of live intermediate results close to the graph's width rather than
//!   its size (the same aim as dask.order).
//! - A result is released the moment its last dependent finishes, unless it is an output.
//! - Placement (for workers that keep results where they were computed): a task that becomes ready may
//!   be placed on a group of workers, the one holding its inputs. A worker takes the first task placed
//!   on its own group, else the first unplaced one, else the first placed elsewhere. It never waits
//!   while any task is ready, so placement can only ever cost data movement, never a stall or a hang.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::{Graph, TaskId};

#[derive(Debug)]
pub struct Schedule {
    unfinished_deps: Vec<u32>,
    unfinished_dependents: Vec<u32>,
    is_output: Vec<bool>,
    /// Ready tasks placed on each group, then (last) the unplaced ones.
    ready: Vec<BinaryHeap<Reverse<TaskId>>>,
    ready_len: usize,
    unfinished: usize,
}

impl Schedule {
    /// A schedule for workers in `groups` placement groups (1 when results live in one place).
    pub fn new(graph: &Graph, outputs: &[TaskId], groups: usize) -> Self {
        let mut is_output = vec![false; graph.len()];
        for output in outputs {
            is_output[output.index()] = true;
        }
        let unfinished_deps: Vec<u32> = graph.tasks().map(|t| graph.deps(t).len() as u32).collect();
        let mut ready = vec![BinaryHeap::new(); groups.max(1) + 1];
        let unplaced: BinaryHeap<_> = graph
            .tasks()
            .filter(|t| unfinished_deps[t.index()] == 0)
            .map(Reverse)
            .collect();
        let ready_len = unplaced.len();
        *ready.last_mut().expect("at least one heap") = unplaced;
        Schedule {
            unfinished_dependents: graph
                .tasks()
                .map(|t| graph.dependents(t).len() as u32)
                .collect(),
            unfinished_deps,
            is_output,
            ready,
            ready_len,
            unfinished: graph.len(),
        }
    }

    /// Takes the ready task a worker of `group` should run next (see the policy); the caller must
    /// [`Schedule::finish`] it.
    pub fn next_ready(&mut self, group: Option<usize>) -> Option<TaskId> {
        let unplaced = self.ready.len() - 1;
        let own = group.filter(|&g| g < unplaced && !self.ready[g].is_empty());
        let heap = own.or_else(|| {
            if !self.ready[unplaced].is_empty() {
                return Some(unplaced);
            }
            (0..unplaced)
                .filter_map(|g| self.ready[g].peek().map(|top| (top, g)))
                .max()
                .map(|(_, g)| g)
        })?;
        self.ready_len -= 1;
        self.ready[heap].pop().map(|Reverse(task)| task)
    }

    pub fn ready_len(&self) -> usize {
        self.ready_len
    }

    pub fn is_finished(&self) -> bool {
        self.unfinished == 0
    }

    /// Records that `task` ran: each dependent that becomes ready is placed on the group `place` names
    /// (`None`, or a group out of range: unplaced), and `release` is called for every input that no
    /// unfinished task needs any more.
    pub fn finish(
        &mut self,
        graph: &Graph,
        task: TaskId,
        mut place: impl FnMut(TaskId) -> Option<usize>,
        mut release: impl FnMut(TaskId),
    ) {
        self.unfinished -= 1;
        let unplaced = self.ready.len() - 1;
        for &dependent in graph.dependents(task) {
            let waiting = &mut self.unfinished_deps[dependent.index()];
            *waiting -= 1;
            if *waiting == 0 {
                let heap = place(dependent)
                    .filter(|&g| g < unplaced)
                    .unwrap_or(unplaced);
                self.ready[heap].push(Reverse(dependent));
                self.ready_len += 1;
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
        let mut schedule = Schedule::new(&graph, &[root], 1);
        let (mut live, mut peak, mut order) = (0i64, 0i64, vec![]);
        while let Some(task) = schedule.next_ready(None) {
            order.push(task);
            live += 1;
            peak = peak.max(live);
            schedule.finish(&graph, task, |_| None, |_| live -= 1);
        }
        assert!(schedule.is_finished());
        assert_eq!(live, 1, "only the output stays");
        assert!(peak <= 12, "peak {peak} live results for a depth-10 tree");
        assert_eq!(order, graph.tasks().collect::<Vec<_>>());
    }

    #[test]
    fn outputs_are_never_released_even_when_they_feed_other_tasks() {
        let graph = Graph::from_deps::<(), _, _>([vec![], vec![TaskId(0)]]).unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(0), TaskId(1)], 1);
        let mut released = vec![];
        while let Some(task) = schedule.next_ready(None) {
            schedule.finish(&graph, task, |_| None, |t| released.push(t));
        }
        assert!(released.is_empty());
    }

    #[test]
    fn repeated_inputs_release_once_after_the_last_use() {
        let graph =
            Graph::from_deps::<(), _, _>([vec![], vec![TaskId(0), TaskId(0)], vec![TaskId(0)]])
                .unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(1), TaskId(2)], 1);
        let mut released = vec![];
        while let Some(task) = schedule.next_ready(None) {
            schedule.finish(&graph, task, |_| None, |t| released.push((task, t)));
        }
        assert_eq!(released, vec![(TaskId(2), TaskId(0))]);
    }

    #[test]
    fn a_task_becomes_ready_only_when_all_its_inputs_finished() {
        let graph =
            Graph::from_deps::<(), _, _>([vec![], vec![], vec![TaskId(0), TaskId(1)]]).unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(2)], 1);
        assert_eq!(schedule.ready_len(), 2);
        let first = schedule.next_ready(None).unwrap();
        schedule.finish(&graph, first, |_| None, |_| {});
        assert_eq!(schedule.next_ready(None), Some(TaskId(1)));
        assert_eq!(schedule.next_ready(None), None);
        schedule.finish(&graph, TaskId(1), |_| None, |_| {});
        assert_eq!(schedule.next_ready(None), Some(TaskId(2)));
    }

    /// Two independent chains whose heads ran on groups 0 and 1: each group continues its own chain.
    #[test]
    fn workers_take_tasks_placed_on_their_group_first() {
        let graph =
            Graph::from_deps::<(), _, _>([vec![], vec![TaskId(0)], vec![], vec![TaskId(2)]])
                .unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(1), TaskId(3)], 2);
        let ran_on = [0, 0, 1, 1];
        let place = |t: TaskId| Some(ran_on[graph.deps(t)[0].index()]);
        assert_eq!(
            schedule.next_ready(Some(1)),
            Some(TaskId(0)),
            "unplaced: first by priority"
        );
        assert_eq!(schedule.next_ready(Some(0)), Some(TaskId(2)));
        schedule.finish(&graph, TaskId(0), place, |_| {});
        schedule.finish(&graph, TaskId(2), place, |_| {});
        assert_eq!(schedule.ready_len(), 2);
        assert_eq!(schedule.next_ready(Some(1)), Some(TaskId(3)));
        assert_eq!(schedule.next_ready(Some(0)), Some(TaskId(1)));
    }

    #[test]
    fn a_worker_with_nothing_of_its_own_steals_rather_than_waits() {
        let graph =
            Graph::from_deps::<(), _, _>([vec![], vec![TaskId(0)], vec![TaskId(0)], vec![]])
                .unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(1), TaskId(2), TaskId(3)], 3);
        assert_eq!(schedule.next_ready(Some(0)), Some(TaskId(0)));
        schedule.finish(&graph, TaskId(0), |_| Some(0), |_| {});
        // Group 2 prefers the unplaced task, then takes group 0's in priority order.
        assert_eq!(schedule.next_ready(Some(2)), Some(TaskId(3)));
        assert_eq!(schedule.next_ready(Some(2)), Some(TaskId(1)));
        assert_eq!(schedule.next_ready(None), Some(TaskId(2)));
        assert_eq!(schedule.next_ready(Some(1)), None);
        assert_eq!(schedule.ready_len(), 0);
    }

    #[test]
    fn a_placement_out_of_range_leaves_the_task_unplaced() {
        let graph = Graph::from_deps::<(), _, _>([vec![], vec![TaskId(0)]]).unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(1)], 2);
        let first = schedule.next_ready(None).unwrap();
        schedule.finish(&graph, first, |_| Some(7), |_| {});
        assert_eq!(schedule.next_ready(Some(1)), Some(TaskId(1)));
    }
}
