//! The scheduling policy as a deterministic state machine, with no threads or values in it.
//!
//! Policy:
//! - Among ready tasks the smallest id runs first. Ids are a depth-first post-order from the outputs, so
//!   this finishes the branch in progress before opening a new one, the way a sequential evaluation
//!   would, which keeps the number of live intermediate results close to the graph's width rather than
//!   its size (the same aim as dask.order).
//! - A result is released the moment its last dependent finishes, unless it is an output.
//! - A result moves into the last of its dependents to start, unless it is an output: only earlier
//!   dependents get a copy (see [`Schedule::start`]).
//! - Placement (for workers that keep results where they were computed): a task that becomes ready may
//!   be placed on a group of workers, the one holding its inputs. A worker takes the first task placed
//!   on its own group, else the first unplaced one, else one placed elsewhere. It never waits while any
//!   task is ready, so placement can only ever cost data movement, never a stall or a hang.
//! - With several groups, the tasks ready from the start (which have no inputs to be near) are shared
//!   out in contiguous runs of ids, one run per group. Neighbouring ids are neighbouring branches, so
//!   each group works through whole subtrees and their results meet where they were made. A worker
//!   out of work of its own steals from the far end of the longest run, away from where its owner is
//!   working, before it takes a task placed elsewhere (which would move that task's inputs).
//! - A result lost after it was computed (with a worker process) makes the schedule step back: see
//!   [`crate::recovery`].
//! - A failed task, when the computation keeps going past failures, counts as finished for its inputs
//!   (they are released as if it had run) and takes every task downstream of it with it: those never
//!   become ready, and they count as finished for their own inputs too, so nothing waits for them and
//!   nothing is kept for them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use crate::recovery::Recovery;
use crate::{Graph, TaskId};

/// Which task runs next and when a result may go, for one computation (see the module's policy).
#[derive(Debug)]
pub struct Schedule {
    pub(crate) unfinished_deps: Vec<u32>,
    pub(crate) unfinished_dependents: Vec<u32>,
    pub(crate) unstarted_dependents: Vec<u32>,
    is_output: Vec<bool>,
    /// Failed, or downstream of a failure: never ready.
    failed: Vec<bool>,
    /// Ready tasks placed on each group, then (last) the unplaced ones.
    pub(crate) ready: Vec<BinaryHeap<Reverse<TaskId>>>,
    /// With several groups, each group's run of the tasks ready from the start, in id order.
    pub(crate) roots: Vec<VecDeque<TaskId>>,
    /// With one group, the tasks ready from the start, in id order: they come out of the front of a
    /// queue in a few instructions rather than out of a heap of thousands, under the job's lock.
    pub(crate) initial: VecDeque<TaskId>,
    pub(crate) ready_len: usize,
    pub(crate) unfinished: usize,
    pub(crate) finished: Vec<bool>,
    /// What only a computation that lost results needs; `None` until the first loss, so that the
    /// common case pays nothing for it.
    pub(crate) recovery: Option<Box<Recovery>>,
}

impl Schedule {
    /// A schedule for workers in `groups` placement groups (1 when results live in one place).
    pub fn new(graph: &Graph, outputs: &[TaskId], groups: usize) -> Self {
        let mut is_output = vec![false; graph.len()];
        for output in outputs {
            is_output[output.index()] = true;
        }
        let unfinished_deps: Vec<u32> = graph.tasks().map(|t| graph.deps(t).len() as u32).collect();
        let groups = groups.max(1);
        let ready = vec![BinaryHeap::new(); groups + 1];
        let initial: Vec<TaskId> = graph
            .tasks()
            .filter(|t| unfinished_deps[t.index()] == 0)
            .collect();
        let ready_len = initial.len();
        let (roots, initial) = if groups == 1 {
            (Vec::new(), initial.into())
        } else {
            let roots = (0..groups)
                .map(|g| {
                    initial[g * ready_len / groups..(g + 1) * ready_len / groups]
                        .iter()
                        .copied()
                        .collect()
                })
                .collect();
            (roots, VecDeque::new())
        };
        let unfinished_dependents: Vec<u32> = graph
            .tasks()
            .map(|t| graph.dependents(t).len() as u32)
            .collect();
        Schedule {
            unstarted_dependents: unfinished_dependents.clone(),
            unfinished_dependents,
            unfinished_deps,
            is_output,
            failed: vec![false; graph.len()],
            ready,
            roots,
            initial,
            ready_len,
            unfinished: graph.len(),
            finished: vec![false; graph.len()],
            recovery: None,
        }
    }

    /// Takes the ready task a worker of `group` should run next (see the policy); the caller must
    /// [`Schedule::finish`] it.
    pub fn next_ready(&mut self, group: Option<usize>) -> Option<TaskId> {
        let task = self
            .take_own(group)
            .or_else(|| self.take_unplaced())
            .or_else(|| self.steal())?;
        self.ready_len -= 1;
        Some(task)
    }

    /// The first of the tasks placed on `group` and of its run of initial tasks.
    fn take_own(&mut self, group: Option<usize>) -> Option<TaskId> {
        let g = group.filter(|&g| g < self.ready.len() - 1)?;
        let placed = self.ready[g].peek().map(|&Reverse(task)| task);
        let root = self.roots.get(g).and_then(|run| run.front().copied());
        match (placed, root) {
            (Some(placed), Some(root)) if root < placed => self.roots[g].pop_front(),
            (Some(_), _) => self.ready[g].pop().map(|Reverse(task)| task),
            (None, Some(_)) => self.roots[g].pop_front(),
            (None, None) => None,
        }
    }

    /// The first unplaced task, ready from the start or since.
    fn take_unplaced(&mut self) -> Option<TaskId> {
        let heap = self.ready.last_mut()?;
        match (heap.peek(), self.initial.front()) {
            (Some(&Reverse(since)), Some(&first)) if first < since => self.initial.pop_front(),
            (Some(_), _) => heap.pop().map(|Reverse(task)| task),
            (None, _) => self.initial.pop_front(),
        }
    }

    /// Work from other groups: the last task of the longest run of initial tasks, else the first task
    /// placed on another group.
    fn steal(&mut self) -> Option<TaskId> {
        let longest = self.roots.iter_mut().max_by_key(|run| run.len());
        if let Some(task) = longest.and_then(VecDeque::pop_back) {
            return Some(task);
        }
        let placed = self.ready.len() - 1;
        let (_, g) = (0..placed)
            .filter_map(|g| self.ready[g].peek().map(|top| (top, g)))
            .max()?;
        self.ready[g].pop().map(|Reverse(task)| task)
    }

    /// Records that `task`, just taken by [`Schedule::next_ready`], starts: calls `input` for each of
    /// its inputs in order, with whether this is the input's last use. A value at its last use may move
    /// into the task, since no task that starts later needs it; an output is never at its last use.
    pub fn start(&mut self, graph: &Graph, task: TaskId, mut input: impl FnMut(TaskId, bool)) {
        if let Some(recovery) = &mut self.recovery {
            recovery.started(task);
        }
        for &dep in graph.deps(task) {
            let unstarted = &mut self.unstarted_dependents[dep.index()];
            *unstarted -= 1;
            input(dep, *unstarted == 0 && !self.is_output[dep.index()]);
        }
    }

    /// How many tasks are ready to run.
    pub fn ready_len(&self) -> usize {
        self.ready_len
    }

    /// Whether every task has finished.
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
        self.finished[task.index()] = true;
        if let Some(recovery) = &mut self.recovery {
            recovery.finished(task);
        }
        let unplaced = self.ready.len() - 1;
        for &dependent in graph.dependents(task) {
            let waiting = &mut self.unfinished_deps[dependent.index()];
            // A task recomputed after a loss has dependents that started (or finished) with its
            // previous result and wait for nothing.
            let Some(left) = waiting.checked_sub(1) else {
                continue;
            };
            *waiting = left;
            if left == 0 && !self.failed[dependent.index()] {
                let heap = place(dependent)
                    .filter(|&g| g < unplaced)
                    .unwrap_or(unplaced);
                self.ready[heap].push(Reverse(dependent));
                self.ready_len += 1;
            }
        }
        self.release_inputs(graph, task, &mut release);
    }

    /// Records that `task`, which started, failed: it and every task downstream of it end without
    /// running. `skipped` is called for each task downstream (once each, never for `task`), and
    /// `release` for every input that no unfinished task needs any more.
    pub fn fail(
        &mut self,
        graph: &Graph,
        task: TaskId,
        mut skipped: impl FnMut(TaskId),
        mut release: impl FnMut(TaskId),
    ) {
        self.failed[task.index()] = true;
        let mut ended = vec![task];
        while let Some(ending) = ended.pop() {
            self.unfinished -= 1;
            if ending != task {
                // Never starts: a value it would have taken last moves into another consumer.
                for &dep in graph.deps(ending) {
                    self.unstarted_dependents[dep.index()] -= 1;
                }
            }
            self.release_inputs(graph, ending, &mut release);
            for &dependent in graph.dependents(ending) {
                if !std::mem::replace(&mut self.failed[dependent.index()], true) {
                    skipped(dependent);
                    ended.push(dependent);
                }
            }
        }
    }

    /// `task` no longer needs its inputs: releases each one no unfinished task needs.
    fn release_inputs(&mut self, graph: &Graph, task: TaskId, release: &mut impl FnMut(TaskId)) {
        for &dep in graph.deps(task) {
            let pending = &mut self.unfinished_dependents[dep.index()];
            *pending -= 1;
            // A failed task has no result to release.
            if *pending == 0 && !self.is_output[dep.index()] && !self.failed[dep.index()] {
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
    fn only_the_last_consumer_to_start_takes_a_value_and_outputs_never_move() {
        let graph = Graph::from_deps::<(), _, _>([
            vec![],
            vec![TaskId(0), TaskId(0)],
            vec![TaskId(0), TaskId(1)],
        ])
        .unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(1), TaskId(2)], 1);
        let mut uses = vec![];
        while let Some(task) = schedule.next_ready(None) {
            schedule.start(&graph, task, |dep, last| uses.push((task.0, dep.0, last)));
            schedule.finish(&graph, task, |_| None, |_| {});
        }
        assert_eq!(
            uses,
            [(1, 0, false), (1, 0, false), (2, 0, true), (2, 1, false)]
        );
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

    /// Two independent chains, one head in each group's run: each group continues its own chain.
    #[test]
    fn workers_take_tasks_placed_on_their_group_first() {
        let graph =
            Graph::from_deps::<(), _, _>([vec![], vec![TaskId(0)], vec![], vec![TaskId(2)]])
                .unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(1), TaskId(3)], 2);
        let ran_on = [0, 0, 1, 1];
        let place = |t: TaskId| Some(ran_on[graph.deps(t)[0].index()]);
        assert_eq!(schedule.next_ready(Some(1)), Some(TaskId(2)), "its run");
        assert_eq!(schedule.next_ready(Some(0)), Some(TaskId(0)));
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
        let mut schedule = Schedule::new(&graph, &[TaskId(1), TaskId(2), TaskId(3)], 2);
        assert_eq!(schedule.next_ready(Some(0)), Some(TaskId(0)));
        schedule.finish(&graph, TaskId(0), |t| (t == TaskId(1)).then_some(0), |_| {});
        // Group 1 takes its own run, then the unplaced task, then group 0's.
        assert_eq!(schedule.next_ready(Some(1)), Some(TaskId(3)));
        assert_eq!(schedule.next_ready(Some(1)), Some(TaskId(2)));
        assert_eq!(schedule.next_ready(Some(1)), Some(TaskId(1)));
        assert_eq!(schedule.next_ready(None), None);
        assert_eq!(schedule.ready_len(), 0);
    }

    /// A tree's leaves are shared out in runs of neighbours, and a thief takes from the far end.
    #[test]
    fn groups_start_on_runs_of_neighbouring_leaves() {
        let (graph, root) = tree(8);
        let leaves: Vec<TaskId> = graph
            .tasks()
            .filter(|&t| graph.deps(t).is_empty())
            .collect();
        let mut schedule = Schedule::new(&graph, &[root], 2);
        for &leaf in &leaves[4..] {
            assert_eq!(
                schedule.next_ready(Some(1)),
                Some(leaf),
                "group 1 runs the right half"
            );
        }
        assert_eq!(
            schedule.next_ready(Some(1)),
            Some(leaves[3]),
            "stolen from the far end"
        );
        assert_eq!(schedule.next_ready(Some(0)), Some(leaves[0]));
        assert_eq!(schedule.next_ready(None), Some(leaves[2]));
        assert_eq!(schedule.ready_len(), 1);
    }

    #[test]
    fn a_placement_out_of_range_leaves_the_task_unplaced() {
        let graph = Graph::from_deps::<(), _, _>([vec![], vec![TaskId(0)]]).unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(1)], 2);
        let first = schedule.next_ready(None).unwrap();
        schedule.finish(&graph, first, |_| Some(7), |_| {});
        assert_eq!(schedule.next_ready(Some(1)), Some(TaskId(1)));
    }

    /// 0 feeds 1 (which fails) and 3; 1 feeds 2; 3 runs on. 2 never becomes ready, and 0 goes once
    /// 3, its only consumer left, finishes.
    #[test]
    fn a_failure_ends_its_downstream_and_releases_what_only_they_needed() {
        let graph = Graph::from_deps::<(), _, _>([
            vec![],
            vec![TaskId(0)],
            vec![TaskId(1), TaskId(0)],
            vec![TaskId(0)],
        ])
        .unwrap();
        let mut schedule = Schedule::new(&graph, &[TaskId(2), TaskId(3)], 1);
        let mut released = vec![];
        let zero = schedule.next_ready(None).unwrap();
        schedule.finish(&graph, zero, |_| None, |_| {});
        assert_eq!(schedule.next_ready(None), Some(TaskId(1)));
        schedule.start(&graph, TaskId(1), |_, _| {});
        let mut skipped = vec![];
        schedule.fail(&graph, TaskId(1), |t| skipped.push(t), |t| released.push(t));
        assert_eq!(skipped, [TaskId(2)]);
        assert!(released.is_empty(), "3 still needs 0");
        assert_eq!(schedule.next_ready(None), Some(TaskId(3)));
        let mut uses = vec![];
        schedule.start(&graph, TaskId(3), |dep, last| uses.push((dep, last)));
        assert_eq!(uses, [(TaskId(0), true)], "2 will never take it");
        schedule.finish(&graph, TaskId(3), |_| None, |t| released.push(t));
        assert_eq!(released, [TaskId(0)]);
        assert_eq!(schedule.next_ready(None), None);
        assert!(schedule.is_finished());
    }
}
