//! Results lost after they were computed, recomputed through the schedule: on random graphs with
//! random losses, inline and on a pool, against a sequential evaluation, with the observer's view and
//! the release bookkeeping checked.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use belated_core::{
    run_inline_observed, Error, Graph, InputsLost, Observer, PlainHost, RetryErrors, Runner,
    TaskId, ThreadPool,
};
use parking_lot::Mutex;
use proptest::prelude::*;

mod common;
use common::{dags, sequential};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A result: its number, and the id under which the fake "worker" holds it.
#[derive(Clone, Debug)]
struct Value {
    number: i64,
    id: u64,
    _alive: Arc<Alive>,
}

/// Counts results alive, to check that what the schedule releases is dropped and nothing leaks.
#[derive(Debug)]
struct Alive(Arc<AtomicI64>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Task `i` computes `i + sum(inputs)` and keeps its result in one of `workers` fake workers. Before
/// the runs `deaths` names, a worker dies and the results it held are lost; a task that finds an input
/// lost reports it rather than running.
struct Lossy {
    workers: u64,
    /// Run number (counting every call) -> the worker that dies before it.
    deaths: HashMap<usize, u64>,
    calls: AtomicUsize,
    next_id: AtomicU64,
    lost: Mutex<HashSet<u64>>,
    alive: Arc<AtomicI64>,
    limit: u32,
}

impl Lossy {
    fn new(workers: u64, deaths: HashMap<usize, u64>, limit: u32) -> Self {
        Lossy {
            workers,
            deaths,
            calls: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            lost: Mutex::new(HashSet::new()),
            alive: Arc::default(),
            limit,
        }
    }

    /// Every id made so far on `worker` is lost (ids to come are on its replacement).
    fn die(&self, worker: u64) {
        let made = self.next_id.load(SeqCst);
        let mut lost = self.lost.lock();
        lost.extend((0..made).filter(|id| id % self.workers == worker));
    }
}

impl Runner for Lossy {
    type Value = Value;
    type Error = String;

    fn run(&self, _task: TaskId, _inputs: &[Value]) -> Result<Value, String> {
        unreachable!("the engine calls run_recoverable")
    }

    fn run_recoverable(
        &self,
        task: TaskId,
        inputs: &mut Vec<Value>,
    ) -> Result<Result<Value, String>, InputsLost> {
        let call = self.calls.fetch_add(1, SeqCst);
        if let Some(&worker) = self.deaths.get(&call) {
            self.die(worker);
        }
        let lost: Vec<usize> = {
            let lost = self.lost.lock();
            (0..inputs.len())
                .filter(|&i| lost.contains(&inputs[i].id))
                .collect()
        };
        if !lost.is_empty() {
            // The positions' tasks are the engine's to know: the test passes them through `deps`.
            return Err(InputsLost(
                lost.into_iter().map(|i| TaskId(i as u32)).collect(),
            ));
        }
        self.alive.fetch_add(1, SeqCst);
        Ok(Ok(Value {
            number: task.0 as i64 + inputs.iter().map(|v| v.number).sum::<i64>(),
            id: self.next_id.fetch_add(1, SeqCst),
            _alive: Arc::new(Alive(Arc::clone(&self.alive))),
        }))
    }

    fn recompute_limit(&self) -> u32 {
        self.limit
    }
}

/// [`Lossy`] reporting lost inputs by task id, as a real runner does, given the graph.
struct ByTask {
    lossy: Lossy,
    deps: Vec<Vec<TaskId>>,
}

impl Runner for ByTask {
    type Value = Value;
    type Error = String;

    fn run(&self, task: TaskId, inputs: &[Value]) -> Result<Value, String> {
        self.lossy.run(task, inputs)
    }

    fn run_recoverable(
        &self,
        task: TaskId,
        inputs: &mut Vec<Value>,
    ) -> Result<Result<Value, String>, InputsLost> {
        self.lossy
            .run_recoverable(task, inputs)
            .map_err(|InputsLost(positions)| {
                InputsLost(
                    positions
                        .into_iter()
                        .map(|p| self.deps[task.index()][p.index()])
                        .collect(),
                )
            })
    }

    fn recompute_limit(&self) -> u32 {
        self.lossy.limit
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    Started,
    Finished(bool),
    Undone(bool),
}

#[derive(Default)]
struct Log(Mutex<Vec<(TaskId, Seen)>>);

impl Observer for Log {
    fn task_started(&self, task: TaskId, _worker: Option<usize>) {
        self.0.lock().push((task, Seen::Started));
    }

    fn task_finished(&self, task: TaskId, _worker: Option<usize>, succeeded: bool) {
        self.0.lock().push((task, Seen::Finished(succeeded)));
    }

    fn task_undone(&self, task: TaskId, succeeded: bool) {
        self.0.lock().push((task, Seen::Undone(succeeded)));
    }
}

impl Log {
    fn count(&self, task: TaskId, seen: Seen) -> usize {
        self.0
            .lock()
            .iter()
            .filter(|event| **event == (task, seen))
            .count()
    }
}

/// Deaths before some of the first runs: `(run, worker)`.
fn deaths() -> impl Strategy<Value = HashMap<usize, u64>> {
    prop::collection::hash_map(0usize..150, 0u64..3, 0..6)
}

/// Checks what the observer saw: per task, starts and finishes pair up, each run that found inputs
/// lost was taken back, and each task finished with a result once more than it was undone.
fn check_observed(log: &Log, tasks: usize) -> Result<(), TestCaseError> {
    for task in (0..tasks as u32).map(TaskId) {
        let started = log.count(task, Seen::Started);
        prop_assert_eq!(
            started,
            log.count(task, Seen::Finished(true)) + log.count(task, Seen::Finished(false)),
            "every start of {} has a finish",
            task
        );
        prop_assert_eq!(
            log.count(task, Seen::Finished(false)),
            log.count(task, Seen::Undone(false)),
            "a run of {} that found inputs lost is taken back",
            task
        );
        prop_assert_eq!(
            log.count(task, Seen::Finished(true)),
            log.count(task, Seen::Undone(true)) + 1,
            "{} is done once in the end",
            task
        );
    }
    Ok(())
}

fn outputs_of(deps: &[Vec<TaskId>], pick: &[prop::sample::Index]) -> Vec<TaskId> {
    pick.iter()
        .map(|i| TaskId(i.index(deps.len()) as u32))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn inline_recomputes_lost_results_to_the_sequential_answer(
        deps in dags(60),
        deaths in deaths(),
        pick in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
    ) {
        let outputs = outputs_of(&deps, &pick);
        let runner = Arc::new(ByTask { lossy: Lossy::new(3, deaths, u32::MAX), deps: deps.clone() });
        let log = Arc::new(Log::default());
        let graph = Graph::from_deps::<String, _, _>(deps.clone()).unwrap();
        let values = run_inline_observed(graph, outputs.clone(), Arc::clone(&runner), Some(log.clone() as _))
            .expect("every loss is recovered");
        let expected = sequential(&deps);
        let got: Vec<i64> = values.iter().map(|v| v.number).collect();
        let want: Vec<i64> = outputs.iter().map(|t| expected[t.index()]).collect();
        prop_assert_eq!(got, want);
        let distinct: HashSet<u64> = values.iter().map(|v| v.id).collect();
        prop_assert_eq!(
            runner.lossy.alive.load(SeqCst),
            distinct.len() as i64,
            "everything but the outputs was released"
        );
        check_observed(&log, deps.len())?;
        drop(values);
        prop_assert_eq!(runner.lossy.alive.load(SeqCst), 0);
    }

    #[test]
    fn a_pool_recomputes_lost_results_to_the_sequential_answer(
        deps in dags(60),
        deaths in deaths(),
        pick in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
    ) {
        let outputs = outputs_of(&deps, &pick);
        let runner = Arc::new(ByTask { lossy: Lossy::new(3, deaths, u32::MAX), deps: deps.clone() });
        let log = Arc::new(Log::default());
        let graph = Graph::from_deps::<String, _, _>(deps.clone()).unwrap();
        let pool = ThreadPool::new(3, Arc::new(PlainHost)).unwrap();
        let handle = pool.submit_observed(graph, outputs.clone(), Arc::clone(&runner), Some(log.clone() as _));
        prop_assert!(handle.wait_timeout(TIMEOUT), "the computation hung");
        let values = handle.result().expect("every loss is recovered");
        let expected = sequential(&deps);
        let got: Vec<i64> = values.iter().map(|v| v.number).collect();
        let want: Vec<i64> = outputs.iter().map(|t| expected[t.index()]).collect();
        prop_assert_eq!(got, want);
        // Observer calls come outside the job's lock: the pool is joined before they are counted.
        pool.shutdown();
        check_observed(&log, deps.len())?;
        let distinct: HashSet<u64> = values.iter().map(|v| v.id).collect();
        prop_assert_eq!(runner.lossy.alive.load(SeqCst), distinct.len() as i64);
    }
}

/// 0 -> 1 -> 2 -> 3: the worker holding everything dies before 3 runs. 2 is lost, and 1 and 0 are
/// gone too (released once consumed): all three run again, inputs first, and then 3.
#[test]
fn a_lost_input_is_recomputed_with_its_released_lineage_inputs_first() {
    let deps = vec![vec![], vec![TaskId(0)], vec![TaskId(1)], vec![TaskId(2)]];
    let runner = Arc::new(ByTask {
        lossy: Lossy::new(1, HashMap::from([(3, 0)]), 1),
        deps: deps.clone(),
    });
    let log = Arc::new(Log::default());
    let graph = Graph::from_deps::<String, _, _>(deps).unwrap();
    let values =
        run_inline_observed(graph, vec![TaskId(3)], runner, Some(log.clone() as _)).unwrap();
    assert_eq!(values[0].number, 6);
    let events = log.0.lock().clone();
    use Seen::*;
    let t = TaskId;
    assert_eq!(
        events,
        [
            (t(0), Started),
            (t(0), Finished(true)),
            (t(1), Started),
            (t(1), Finished(true)),
            (t(2), Started),
            (t(2), Finished(true)),
            (t(3), Started),
            (t(3), Finished(false)),
            (t(3), Undone(false)),
            (t(0), Undone(true)),
            (t(1), Undone(true)),
            (t(2), Undone(true)),
            (t(0), Started),
            (t(0), Finished(true)),
            (t(1), Started),
            (t(1), Finished(true)),
            (t(2), Started),
            (t(2), Finished(true)),
            (t(3), Started),
            (t(3), Finished(true)),
        ]
    );
}

/// An input still held (an output, here) is not recomputed with the lost one it feeds.
#[test]
fn a_held_input_of_a_lost_result_is_not_recomputed() {
    // 0 feeds 1, 1 feeds 2; 0 is an output, so it is held throughout.
    let deps = vec![vec![], vec![TaskId(0)], vec![TaskId(1)]];
    let runner = Arc::new(Lossy::new(2, HashMap::new(), 1));
    // Only 1's result (id 1, on worker 1) is lost, just before 2 runs.
    runner.lost.lock().insert(1);
    let runner = ByTask {
        lossy: Arc::into_inner(runner).unwrap(),
        deps: deps.clone(),
    };
    let log = Arc::new(Log::default());
    let graph = Graph::from_deps::<String, _, _>(deps).unwrap();
    let values = run_inline_observed(
        graph,
        vec![TaskId(0), TaskId(2)],
        runner,
        Some(log.clone() as _),
    )
    .unwrap();
    assert_eq!(values.iter().map(|v| v.number).collect::<Vec<_>>(), [0, 3]);
    assert_eq!(log.count(TaskId(0), Seen::Started), 1);
    assert_eq!(log.count(TaskId(1), Seen::Started), 2);
    assert_eq!(log.count(TaskId(2), Seen::Started), 2);
}

/// A result lost every time it is made ends the computation once it was recomputed `limit` times.
#[test]
fn a_result_lost_more_often_than_the_limit_fails_the_computation() {
    struct AlwaysLost;
    impl Runner for AlwaysLost {
        type Value = i64;
        type Error = String;
        fn run(&self, _task: TaskId, _inputs: &[i64]) -> Result<i64, String> {
            Ok(1)
        }
        fn run_recoverable(
            &self,
            task: TaskId,
            inputs: &mut Vec<i64>,
        ) -> Result<Result<i64, String>, InputsLost> {
            match task.0 {
                0 => Ok(Ok(1)),
                _ => Err(InputsLost(vec![TaskId(0)])),
            }
            .inspect(|_| assert!(inputs.len() <= 1))
        }
        fn recompute_limit(&self) -> u32 {
            2
        }
    }
    let graph = Graph::from_deps::<String, _, _>([vec![], vec![TaskId(0)]]).unwrap();
    let log = Arc::new(Log::default());
    match run_inline_observed(graph, vec![TaskId(1)], AlwaysLost, Some(log.clone() as _)) {
        Err(Error::LostTooOften { task, times }) => {
            assert_eq!((task, times), (TaskId(0), 3));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        log.count(TaskId(0), Seen::Started),
        3,
        "the first run and two recomputes"
    );
}

/// A runner that names no input of the task cannot requeue it forever.
#[test]
fn a_report_naming_no_input_counts_against_the_task_itself() {
    struct Confused;
    impl Runner for Confused {
        type Value = i64;
        type Error = String;
        fn run(&self, _task: TaskId, _inputs: &[i64]) -> Result<i64, String> {
            Ok(1)
        }
        fn run_recoverable(
            &self,
            _task: TaskId,
            _inputs: &mut Vec<i64>,
        ) -> Result<Result<i64, String>, InputsLost> {
            Err(InputsLost(vec![TaskId(7)]))
        }
        fn recompute_limit(&self) -> u32 {
            1
        }
    }
    let graph = Graph::from_deps::<String, _, _>([vec![]]).unwrap();
    let outcome = run_inline_observed(graph, vec![TaskId(0)], Confused, None);
    assert!(
        matches!(
            outcome,
            Err(Error::LostTooOften {
                task: TaskId(0),
                times: 2
            })
        ),
        "{outcome:?}"
    );
}

/// A task handed back before it started (a batch's call after one that overran) is no loss, however
/// often: it runs once it is not handed back, with nothing recomputed, whatever the limit.
#[test]
fn a_task_handed_back_before_it_started_again_and_again_is_no_loss() {
    struct HandsBack {
        runs: Vec<AtomicU32>,
    }
    impl Runner for HandsBack {
        type Value = i64;
        type Error = String;
        fn run(&self, _task: TaskId, _inputs: &[i64]) -> Result<i64, String> {
            unreachable!("the engine calls run_recoverable")
        }
        fn run_recoverable(
            &self,
            task: TaskId,
            inputs: &mut Vec<i64>,
        ) -> Result<Result<i64, String>, InputsLost> {
            if self.runs[task.index()].fetch_add(1, SeqCst) < 5 {
                return Err(InputsLost::not_started(task));
            }
            Ok(Ok(1 + inputs.iter().sum::<i64>()))
        }
    }
    let graph = Graph::from_deps::<String, _, _>([vec![], vec![TaskId(0)]]).unwrap();
    let runner = Arc::new(HandsBack {
        runs: (0..2).map(|_| AtomicU32::new(0)).collect(),
    });
    let values = run_inline_observed(graph, vec![TaskId(1)], Arc::clone(&runner), None);
    assert_eq!(values.unwrap(), [2]);
    assert_eq!(
        runner.runs[0].load(SeqCst),
        6,
        "task 0 was not run again for task 1's hand-backs"
    );
}

/// Task `i` computes `i + sum(inputs)`, but its first `failures[i]` runs fail, each with an error
/// naming the run; a failed task runs again while [`RetryErrors`] allows.
struct Flaky {
    deps: Vec<Vec<TaskId>>,
    failures: Vec<u32>,
    runs: Vec<AtomicU32>,
    retry: RetryErrors,
}

impl Flaky {
    fn new(deps: Vec<Vec<TaskId>>, failures: Vec<u32>, limit: u32) -> Self {
        let tasks = deps.len();
        Flaky {
            deps,
            failures,
            runs: (0..tasks).map(|_| AtomicU32::new(0)).collect(),
            retry: RetryErrors::new(limit, tasks),
        }
    }

    /// What a computation of `outputs` ends with: the sequential values, or the last failure of the
    /// first task (in id order, the order inline runs) that fails more often than it may retry. Every
    /// task of a graph runs, whichever are its outputs.
    fn expected(&self, outputs: &[TaskId]) -> Result<Vec<i64>, (TaskId, String)> {
        let limit = self.retry.limit();
        if let Some(task) = (0..self.deps.len() as u32)
            .map(TaskId)
            .find(|t| self.failures[t.index()] > limit)
        {
            return Err((task, format!("run {} of {task}", limit + 1)));
        }
        let values = sequential(&self.deps);
        Ok(outputs.iter().map(|t| values[t.index()]).collect())
    }
}

impl Runner for Flaky {
    type Value = i64;
    type Error = String;

    fn run(&self, _task: TaskId, _inputs: &[i64]) -> Result<i64, String> {
        unreachable!("the engine calls run_recoverable")
    }

    fn run_recoverable(
        &self,
        task: TaskId,
        inputs: &mut Vec<i64>,
    ) -> Result<Result<i64, String>, InputsLost> {
        assert_eq!(
            inputs.len(),
            self.deps[task.index()].len(),
            "a task run again has its inputs again"
        );
        let run = self.runs[task.index()].fetch_add(1, SeqCst) + 1;
        if run > self.failures[task.index()] {
            return Ok(Ok(task.0 as i64 + inputs.iter().sum::<i64>()));
        }
        if self.retry.again(task) {
            return Err(InputsLost(Vec::new()));
        }
        Ok(Err(format!("run {run} of {task}")))
    }

    fn recompute_limit(&self) -> u32 {
        self.retry.limit()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn failed_tasks_run_again_as_often_as_allowed(
        deps in dags(40),
        failures in prop::collection::vec(prop_oneof![4 => Just(0u32), 1 => 1u32..4], 40),
        limit in 0u32..4,
        pick in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        on_pool in any::<bool>(),
    ) {
        let outputs = outputs_of(&deps, &pick);
        let failures = failures[..deps.len()].to_vec();
        let runner = Arc::new(Flaky::new(deps.clone(), failures.clone(), limit));
        let expected = runner.expected(&outputs);
        let log = Arc::new(Log::default());
        let graph = Graph::from_deps::<String, _, _>(deps.clone()).unwrap();
        let outcome = if on_pool {
            let pool = ThreadPool::new(3, Arc::new(PlainHost)).unwrap();
            let handle = pool.submit_observed(graph, outputs.clone(), Arc::clone(&runner), Some(log.clone() as _));
            prop_assert!(handle.wait_timeout(TIMEOUT), "the computation hung");
            let outcome = handle.result();
            pool.shutdown();
            outcome
        } else {
            run_inline_observed(graph, outputs.clone(), Arc::clone(&runner), Some(log.clone() as _))
        };
        match (outcome, expected) {
            (Ok(values), Ok(want)) => prop_assert_eq!(values, want),
            // On a pool, another task failing for good may come first.
            (Err(Error::Task { task, error }), Err((first, message))) => {
                prop_assert!(failures[task.index()] > limit, "{} failed though it may retry", task);
                if !on_pool {
                    prop_assert_eq!((task, error), (first, message));
                }
            }
            (outcome, expected) => prop_assert!(false, "{:?} where {:?} was expected", outcome, expected),
        }
        for task in (0..deps.len() as u32).map(TaskId) {
            let runs = runner.runs[task.index()].load(SeqCst);
            prop_assert!(runs <= limit + 1, "{} ran {} times", task, runs);
            prop_assert_eq!(log.count(task, Seen::Started) as u32, runs, "every run of {} is seen", task);
        }
    }
}
