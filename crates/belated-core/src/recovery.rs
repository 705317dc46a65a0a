//! Results lost after they were computed (with the worker process that held them): the schedule
//! steps back, so that the lost work is redone on the same path as any task's first run, where
//! observers see it start and finish and deadlines and cancellation apply.
//!
//! Policy:
//! - A runner that finds inputs of a task lost says so ([`InputsLost`]) instead of giving a result.
//!   The task goes back to waiting. Each input it names is marked not done, with every task of that
//!   input's lineage whose result is gone too (released, or moved into a consumer), found by
//!   [`crate::lineage::recompute_order`]. Each runs again once its own inputs are there, and the
//!   task after them.
//! - An input recomputed since the task started is not lost again: the task saw the old result,
//!   and now runs with the new one. An input being recomputed already is waited for.
//! - Consumer counts follow: a task marked not done needs its inputs again (released once it has
//!   finished anew), and a dependent that started with the old result waits for nothing.
//! - A task's result may be lost at most [`crate::Runner::recompute_limit`] times; losing it once more
//!   ends the computation with [`crate::Error::LostTooOften`]. A report naming none of the task's
//!   inputs counts as a loss of the task itself, so no runner can requeue a task forever; but not
//!   one naming the task itself ([`InputsLost::not_started`]): a call a batch handed back before it
//!   started, which neither ran nor lost anything, however often a slow call before it overran.
//! - A lineage is never gone: every task can run again from the graph, down to those with no
//!   inputs (values built by the caller among them).
//! - A task that failed may run again on the same path ([`RetryErrors`], distributed's `retries=`):
//!   its runner reports it lost itself, keeping its inputs, up to a number of times per task; the
//!   failure of its last run is the task's.

use rustc_hash::FxHashSet;
use std::cmp::Reverse;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::{lineage, Graph, Schedule, TaskId};

/// Which inputs of a task were found lost, so that it could not run (see the module's policy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputsLost(pub Vec<TaskId>);

impl InputsLost {
    /// The report of `task` handed back before it started: it runs again, and it is no loss.
    pub fn not_started(task: TaskId) -> Self {
        InputsLost(vec![task])
    }
}

/// How often each task of a computation may fail and run again (distributed's `retries=`). A runner
/// asks [`RetryErrors::again`] when a task failed; on `true` it reports the task lost itself
/// (`InputsLost` naming none), keeping its inputs, and the schedule runs it again as it runs a task
/// whose worker died: observers, deadlines and cancel see every run. Those reports count towards
/// [`crate::Runner::recompute_limit`], which must allow [`RetryErrors::limit`] of them besides its own.
#[derive(Debug, Default)]
pub struct RetryErrors {
    limit: u32,
    /// Per task, the failures counted; empty when nothing is retried.
    failures: Box<[AtomicU32]>,
}

impl RetryErrors {
    /// Each of `tasks` tasks may fail `limit` times and run again.
    pub fn new(limit: u32, tasks: usize) -> Self {
        let counted = if limit == 0 { 0 } else { tasks };
        RetryErrors {
            limit,
            failures: (0..counted).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// How many times a task may fail and run again.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Counts a failure of `task`; whether it runs again.
    pub fn again(&self, task: TaskId) -> bool {
        self.failures
            .get(task.index())
            .is_some_and(|failures| failures.fetch_add(1, Relaxed) < self.limit)
    }
}

/// The bookkeeping only a computation that lost results needs.
#[derive(Debug)]
pub(crate) struct Recovery {
    /// Bumped by every loss reported: orders results against the tasks that started with them.
    epoch: u32,
    /// The epoch at each task's last start.
    started: Vec<u32>,
    /// The epoch at each task's last finish.
    finished: Vec<u32>,
    /// How many times each task's result was lost.
    lost: Vec<u32>,
}

impl Recovery {
    fn new(tasks: usize) -> Self {
        Recovery {
            epoch: 0,
            started: vec![0; tasks],
            finished: vec![0; tasks],
            lost: vec![0; tasks],
        }
    }

    pub(crate) fn started(&mut self, task: TaskId) {
        self.started[task.index()] = self.epoch;
    }

    pub(crate) fn finished(&mut self, task: TaskId) {
        self.finished[task.index()] = self.epoch;
    }
}

impl Schedule {
    /// Whether the result of `dep` that `task` was handed when it last started is still the one the
    /// computation has: `dep` is done and was not recomputed since.
    pub fn input_current(&self, task: TaskId, dep: TaskId) -> bool {
        self.finished[dep.index()]
            && self.recovery.as_ref().is_none_or(|recovery| {
                recovery.finished[dep.index()] <= recovery.started[task.index()]
            })
    }

    /// Records that `task`, started, could not run because its inputs `lost` were lost, and steps
    /// back (see the module's policy). `held` says whether the computation still holds a task's
    /// result, counting what `task` was handed and was put back. The tasks whose results are to be
    /// dropped, to run again, are appended to `undone`. `Err((task, times))` when a result was lost
    /// more than `limit` times; the schedule is then left for the failed computation.
    pub fn requeue(
        &mut self,
        graph: &Graph,
        task: TaskId,
        lost: &[TaskId],
        limit: u32,
        mut held: impl FnMut(TaskId) -> bool,
        undone: &mut Vec<TaskId>,
    ) -> Result<(), (TaskId, u32)> {
        let tasks = graph.len();
        self.recovery
            .get_or_insert_with(|| Box::new(Recovery::new(tasks)))
            .epoch += 1;
        let ready: FxHashSet<TaskId> = self
            .ready
            .iter()
            .flat_map(|heap| heap.iter().map(|&Reverse(task)| task))
            .chain(self.roots.iter().flatten().copied())
            .chain(self.initial.iter().copied())
            .collect();
        let deps = graph.deps(task);
        let mut roots: Vec<TaskId> = lost
            .iter()
            .copied()
            .filter(|&input| deps.contains(&input) && self.input_current(task, input))
            .collect();
        // An input `task` did not find lost may be gone all the same: moved into a consumer that
        // took it at its last use, not counting `task` which now needs it again.
        roots.extend(
            deps.iter()
                .copied()
                .filter(|&dep| self.finished[dep.index()] && !held(dep)),
        );
        if lost != [task] && !lost.iter().any(|input| deps.contains(input)) {
            self.count_loss(task, limit)?;
        }
        for &dep in deps {
            self.unstarted_dependents[dep.index()] += 1;
        }
        let mut affected = vec![task];
        for root in roots {
            if !self.finished[root.index()] {
                continue;
            }
            let lineage = lineage::recompute_order(graph, root, |dep| {
                !self.finished[dep.index()] || held(dep)
            });
            for again in lineage {
                self.undo(graph, again, limit, &ready, &mut affected)?;
                undone.push(again);
            }
        }
        affected.sort_unstable();
        affected.dedup();
        let mut unready = FxHashSet::default();
        let unplaced = self.ready.len() - 1;
        for waiting in affected {
            let count = graph
                .deps(waiting)
                .iter()
                .filter(|dep| !self.finished[dep.index()])
                .count() as u32;
            self.unfinished_deps[waiting.index()] = count;
            match (ready.contains(&waiting), count) {
                (true, 0) | (false, 1..) => {}
                (true, _) => {
                    unready.insert(waiting);
                    self.ready_len -= 1;
                }
                (false, 0) => {
                    self.ready[unplaced].push(Reverse(waiting));
                    self.ready_len += 1;
                }
            }
        }
        if !unready.is_empty() {
            for heap in &mut self.ready {
                heap.retain(|Reverse(task)| !unready.contains(task));
            }
            for run in &mut self.roots {
                run.retain(|task| !unready.contains(task));
            }
            self.initial.retain(|task| !unready.contains(task));
        }
        Ok(())
    }

    fn count_loss(&mut self, task: TaskId, limit: u32) -> Result<(), (TaskId, u32)> {
        let recovery = self.recovery.as_mut().expect("allocated by requeue");
        let times = &mut recovery.lost[task.index()];
        *times += 1;
        match *times > limit {
            true => Err((task, *times)),
            false => Ok(()),
        }
    }

    /// Marks `task`, done, not done: it needs its inputs again, and dependents that have not
    /// started (in `ready`, or waiting) wait for it; those go to `affected` for a recount.
    fn undo(
        &mut self,
        graph: &Graph,
        task: TaskId,
        limit: u32,
        ready: &FxHashSet<TaskId>,
        affected: &mut Vec<TaskId>,
    ) -> Result<(), (TaskId, u32)> {
        self.count_loss(task, limit)?;
        self.finished[task.index()] = false;
        self.unfinished += 1;
        for &dep in graph.deps(task) {
            self.unstarted_dependents[dep.index()] += 1;
            self.unfinished_dependents[dep.index()] += 1;
        }
        affected.push(task);
        for &dependent in graph.dependents(task) {
            let unstarted = !self.finished[dependent.index()]
                && (self.unfinished_deps[dependent.index()] > 0 || ready.contains(&dependent));
            if unstarted {
                affected.push(dependent);
            }
        }
        Ok(())
    }
}
