//! The executors against a sequential evaluation, on random DAGs and on the failure paths.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use belated_core::{
    run_inline, Error, Graph, PlainHost, Runner, Session, TaskId, ThreadPool, Wait,
};
use proptest::prelude::*;

mod common;
use common::{dags, sequential};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A result that counts how many distinct results are alive, to check that memory is released.
#[derive(Clone, Debug)]
struct Value {
    number: i64,
    _alive: Arc<Alive>,
}

#[derive(Debug)]
struct Alive(Arc<Counter>);

#[derive(Debug, Default)]
struct Counter {
    alive: AtomicI64,
    peak: AtomicI64,
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, SeqCst);
    }
}

/// Task `i` computes `i + sum(inputs)`; it fails where `fail_at` says, panics where `panic_at` says.
struct Arithmetic {
    counter: Arc<Counter>,
    fail_at: Option<TaskId>,
    panic_at: Option<TaskId>,
    runs: AtomicUsize,
}

impl Arithmetic {
    fn new() -> Self {
        Arithmetic {
            counter: Arc::default(),
            fail_at: None,
            panic_at: None,
            runs: AtomicUsize::new(0),
        }
    }
}

impl Runner for Arithmetic {
    type Value = Value;
    type Error = String;

    fn run(&self, task: TaskId, inputs: &[Value]) -> Result<Value, String> {
        self.runs.fetch_add(1, SeqCst);
        if Some(task) == self.fail_at {
            return Err(format!("task {task} refuses"));
        }
        if Some(task) == self.panic_at {
            panic!("task {task} panics");
        }
        let alive = self.counter.alive.fetch_add(1, SeqCst) + 1;
        self.counter.peak.fetch_max(alive, SeqCst);
        Ok(Value {
            number: task.0 as i64 + inputs.iter().map(|v| v.number).sum::<i64>(),
            _alive: Arc::new(Alive(Arc::clone(&self.counter))),
        })
    }
}

/// [`Arithmetic`] with tasks placed anywhere: on one of `groups` groups, or (out of range) on none.
struct Scattered {
    inner: Arithmetic,
    groups: usize,
}

impl Runner for Scattered {
    type Value = Value;
    type Error = String;

    fn run(&self, task: TaskId, inputs: &[Value]) -> Result<Value, String> {
        self.inner.run(task, inputs)
    }

    fn place(&self, task: TaskId, inputs: &mut dyn Iterator<Item = &Value>) -> Option<usize> {
        let spread = task.0 as i64 + inputs.map(|v| v.number).sum::<i64>();
        Some(spread.rem_euclid(self.groups as i64 + 1) as usize)
    }
}

fn submit_and_wait(
    pool: &ThreadPool,
    deps: &[Vec<TaskId>],
    outputs: Vec<TaskId>,
    runner: Arc<Arithmetic>,
) -> Result<Vec<Value>, Error<String>> {
    let graph = Graph::from_deps::<String, _, _>(deps.to_vec()).unwrap();
    let handle = pool.submit(graph, outputs, runner);
    assert!(handle.wait_timeout(TIMEOUT), "computation hung");
    handle.result()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn inline_and_pool_agree_with_sequential_evaluation(deps in dags(120), pick in prop::collection::vec(any::<prop::sample::Index>(), 1..5)) {
        let expected = sequential(&deps);
        let outputs: Vec<TaskId> = pick.iter().map(|i| TaskId(i.index(deps.len()) as u32)).collect();
        let want: Vec<i64> = outputs.iter().map(|t| expected[t.index()]).collect();

        let runner = Arc::new(Arithmetic::new());
        let graph = Graph::from_deps::<String, _, _>(deps.clone()).unwrap();
        let got = run_inline(graph, outputs.clone(), Arc::clone(&runner)).unwrap();
        prop_assert_eq!(got.iter().map(|v| v.number).collect::<Vec<_>>(), want.clone());
        prop_assert_eq!(runner.runs.load(SeqCst), deps.len());
        drop(got);
        prop_assert_eq!(runner.counter.alive.load(SeqCst), 0, "every result is dropped");

        let pool = ThreadPool::new(3, Arc::new(PlainHost)).unwrap();
        let runner = Arc::new(Arithmetic::new());
        let got = submit_and_wait(&pool, &deps, outputs, Arc::clone(&runner)).unwrap();
        prop_assert_eq!(got.iter().map(|v| v.number).collect::<Vec<_>>(), want);
        prop_assert_eq!(runner.runs.load(SeqCst), deps.len(), "each task runs exactly once");
    }

    #[test]
    fn grouped_pools_agree_with_sequential_evaluation_wherever_tasks_are_placed(deps in dags(120), pick in prop::collection::vec(any::<prop::sample::Index>(), 1..5)) {
        let expected = sequential(&deps);
        let outputs: Vec<TaskId> = pick.iter().map(|i| TaskId(i.index(deps.len()) as u32)).collect();
        let pool = ThreadPool::with_groups(3, 2, Arc::new(PlainHost)).unwrap();
        let runner = Arc::new(Scattered { inner: Arithmetic::new(), groups: 3 });
        let graph = Graph::from_deps::<String, _, _>(deps.clone()).unwrap();
        let handle = pool.submit(graph, outputs.clone(), Arc::clone(&runner));
        prop_assert!(handle.wait_timeout(TIMEOUT), "computation hung");
        let got = handle.result().unwrap();
        prop_assert_eq!(
            got.iter().map(|v| v.number).collect::<Vec<_>>(),
            outputs.iter().map(|t| expected[t.index()]).collect::<Vec<_>>()
        );
        prop_assert_eq!(runner.inner.runs.load(SeqCst), deps.len(), "each task runs exactly once");
        drop(got);
        // The worker that ran the last task drops what it released just after the caller is woken.
        let deadline = std::time::Instant::now() + TIMEOUT;
        while runner.inner.counter.alive.load(SeqCst) != 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        prop_assert_eq!(runner.inner.counter.alive.load(SeqCst), 0, "every result is dropped");
    }

    #[test]
    fn a_failure_surfaces_and_the_pool_stays_usable(deps in dags(120), fail in any::<prop::sample::Index>()) {
        let fail_at = TaskId(fail.index(deps.len()) as u32);
        let last = TaskId(deps.len() as u32 - 1);
        let pool = ThreadPool::new(2, Arc::new(PlainHost)).unwrap();
        let runner = Arc::new(Arithmetic { fail_at: Some(fail_at), ..Arithmetic::new() });
        // Ask for every task so the failing one is always needed.
        let all: Vec<TaskId> = (0..deps.len() as u32).map(TaskId).collect();
        match submit_and_wait(&pool, &deps, all, runner) {
            Err(Error::Task { task, error }) => {
                prop_assert_eq!(task, fail_at);
                prop_assert_eq!(error, format!("task {fail_at} refuses"));
            }
            other => prop_assert!(false, "expected the task's error, got {:?}", other.map(|v| v.len())),
        }
        let again = submit_and_wait(&pool, &deps, vec![last], Arc::new(Arithmetic::new())).unwrap();
        prop_assert_eq!(again[0].number, sequential(&deps)[last.index()]);
    }
}

fn tree(leaves: u32) -> (Vec<Vec<TaskId>>, TaskId) {
    fn build(lo: u32, hi: u32, deps: &mut Vec<Vec<TaskId>>) -> TaskId {
        if hi - lo > 1 {
            let mid = (lo + hi) / 2;
            let pair = vec![build(lo, mid, deps), build(mid, hi, deps)];
            deps.push(pair);
        } else {
            deps.push(vec![]);
        }
        TaskId(deps.len() as u32 - 1)
    }
    let mut deps = Vec::new();
    let root = build(0, leaves, &mut deps);
    (deps, root)
}

#[test]
fn intermediate_results_are_released_early() {
    let (deps, root) = tree(4096);
    let runner = Arc::new(Arithmetic::new());
    let graph = Graph::from_deps::<String, _, _>(deps.clone()).unwrap();
    run_inline(graph, vec![root], Arc::clone(&runner)).unwrap();
    let peak = runner.counter.peak.load(SeqCst);
    assert!(peak <= 14, "inline peak {peak} for a depth-12 tree");

    let pool = ThreadPool::new(4, Arc::new(PlainHost)).unwrap();
    let runner = Arc::new(Arithmetic::new());
    submit_and_wait(&pool, &deps, vec![root], Arc::clone(&runner)).unwrap();
    let peak = runner.counter.peak.load(SeqCst);
    assert!(peak <= 4 * 14, "pool peak {peak} with 4 workers");
}

#[test]
fn a_panicking_task_is_reported_not_fatal() {
    let (deps, root) = tree(64);
    let pool = ThreadPool::new(2, Arc::new(PlainHost)).unwrap();
    let runner = Arc::new(Arithmetic {
        panic_at: Some(TaskId(5)),
        ..Arithmetic::new()
    });
    match submit_and_wait(&pool, &deps, vec![root], runner) {
        Err(Error::Panic { task, message }) => {
            assert_eq!(task, TaskId(5));
            assert_eq!(message, "task #5 panics");
        }
        other => panic!("expected a panic report, got {:?}", other.map(|v| v.len())),
    }
    assert!(submit_and_wait(&pool, &deps, vec![root], Arc::new(Arithmetic::new())).is_ok());
}

/// Blocks every task until released, to observe cancellation mid-run.
struct Gate(
    Arc<(parking_lot::Mutex<bool>, parking_lot::Condvar)>,
    Arc<AtomicUsize>,
);

impl Runner for Gate {
    type Value = i64;
    type Error = String;

    fn run(&self, _task: TaskId, _inputs: &[i64]) -> Result<i64, String> {
        self.1.fetch_add(1, SeqCst);
        let (open, cv) = &*self.0;
        let mut open = open.lock();
        while !*open {
            cv.wait(&mut open);
        }
        Ok(1)
    }
}

#[test]
fn cancelling_stops_new_tasks_and_returns_promptly() {
    let pool = ThreadPool::new(2, Arc::new(PlainHost)).unwrap();
    let gate = Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
    let started = Arc::new(AtomicUsize::new(0));
    let graph = Graph::from_deps::<String, _, _>((0..100).map(|_| vec![])).unwrap();
    let handle = pool.submit(
        graph,
        (0..100).map(TaskId).collect(),
        Gate(gate.clone(), started.clone()),
    );
    assert!(!handle.wait_timeout(Duration::from_millis(50)));
    handle.cancel();
    assert!(handle.wait_timeout(Duration::from_millis(1)));
    assert!(matches!(handle.result(), Err(Error::Cancelled)));
    *gate.0.lock() = true;
    gate.1.notify_all();
    let graph = Graph::from_deps::<String, _, _>([vec![]]).unwrap();
    let handle = pool.submit(graph, vec![TaskId(0)], Gate(gate, started.clone()));
    assert!(handle.wait_timeout(TIMEOUT));
    assert_eq!(handle.result().unwrap(), vec![1]);
    assert!(
        started.load(SeqCst) <= 3,
        "only the tasks already running ran"
    );
}

#[test]
fn an_empty_graph_settles_immediately() {
    let pool = ThreadPool::new(1, Arc::new(PlainHost)).unwrap();
    let handle = pool.submit(
        Graph::from_deps::<String, _, _>(Vec::<Vec<TaskId>>::new()).unwrap(),
        vec![],
        Arc::new(Arithmetic::new()),
    );
    assert!(handle.wait_timeout(Duration::from_millis(1)));
    assert!(handle.result().unwrap().is_empty());
}

#[test]
fn shutdown_joins_every_worker() {
    let pool = ThreadPool::new(4, Arc::new(PlainHost)).unwrap();
    assert_eq!(pool.threads(), 4);
    pool.shutdown();
    assert_eq!(pool.threads(), 0);
    pool.shutdown();
}

#[derive(Default)]
struct Log(parking_lot::Mutex<Vec<(TaskId, Option<usize>, &'static str)>>);

impl belated_core::Observer for Log {
    fn task_started(&self, task: TaskId, worker: Option<usize>) {
        self.0.lock().push((task, worker, "start"));
    }

    fn task_finished(&self, task: TaskId, worker: Option<usize>, succeeded: bool) {
        self.0
            .lock()
            .push((task, worker, if succeeded { "ok" } else { "failed" }));
    }
}

#[test]
fn observers_see_every_task_start_and_finish_on_its_worker() {
    let (deps, root) = tree(32);
    let log = Arc::new(Log::default());
    let graph = Graph::from_deps::<String, _, _>(deps.clone()).unwrap();
    belated_core::run_inline_observed(graph, vec![root], Arithmetic::new(), Some(log.clone()))
        .unwrap();
    let events = std::mem::take(&mut *log.0.lock());
    assert_eq!(events.len(), 2 * deps.len());
    assert!(events
        .chunks(2)
        .all(|pair| pair[0].0 == pair[1].0 && pair[0].2 == "start" && pair[1].2 == "ok"));
    assert!(events.iter().all(|(_, worker, _)| worker.is_none()));

    let pool = ThreadPool::new(3, Arc::new(PlainHost)).unwrap();
    let failing = Arithmetic {
        fail_at: Some(TaskId(0)),
        ..Arithmetic::new()
    };
    let graph = Graph::from_deps::<String, _, _>(deps).unwrap();
    let handle = pool.submit_observed(graph, vec![root], failing, Some(log.clone()));
    assert!(handle.wait_timeout(TIMEOUT));
    assert!(handle.result().is_err());
    let events = log.0.lock();
    // The observer hears of a task before its result is recorded, so the failure is logged by now.
    assert!(events.iter().any(|e| e.0 == TaskId(0) && e.2 == "failed"));
    assert!(events
        .iter()
        .all(|(_, worker, _)| matches!(worker, Some(w) if *w < 3)));
}

/// Results remember the group that computed them, and tasks are placed with their first input.
struct Located {
    ran_on: Vec<AtomicUsize>,
}

impl Runner for Located {
    type Value = usize;
    type Error = String;

    fn run(&self, task: TaskId, _inputs: &[usize]) -> Result<usize, String> {
        std::thread::sleep(Duration::from_micros(200));
        let group = belated_core::current_worker().expect("a pool worker") / 2;
        self.ran_on[task.index()].store(group, SeqCst);
        Ok(group)
    }

    fn place(&self, _task: TaskId, inputs: &mut dyn Iterator<Item = &usize>) -> Option<usize> {
        inputs.next().copied()
    }
}

#[test]
fn chains_stay_on_the_group_that_holds_their_inputs_while_it_has_threads_free() {
    // Two groups of two threads, four independent chains: each group can carry two chains, so no
    // chain ever needs to move.
    let (chains, length) = (4usize, 40usize);
    let mut deps = Vec::new();
    for _ in 0..chains {
        deps.push(vec![]);
        for _ in 1..length {
            deps.push(vec![TaskId((deps.len() - 1) as u32)]);
        }
    }
    let outputs: Vec<TaskId> = (1..=chains)
        .map(|c| TaskId((c * length - 1) as u32))
        .collect();
    let graph = Graph::from_deps::<(), _, _>(deps).unwrap();
    let runner = Arc::new(Located {
        ran_on: (0..graph.len())
            .map(|_| AtomicUsize::new(usize::MAX))
            .collect(),
    });
    let pool = ThreadPool::with_groups(2, 2, Arc::new(PlainHost)).unwrap();
    let handle = pool.submit(graph, outputs, Arc::clone(&runner));
    assert!(handle.wait_timeout(TIMEOUT));
    handle.result().unwrap();
    for chain in 0..chains {
        let groups: Vec<usize> = (0..length)
            .map(|i| runner.ran_on[chain * length + i].load(SeqCst))
            .collect();
        assert!(
            groups.iter().all(|&g| g == groups[0]),
            "chain {chain} moved: {groups:?}"
        );
    }
}

/// A value whose `Drop` panics, unless a panic is already unwinding.
#[derive(Clone, Debug)]
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("bomb went off");
        }
    }
}

/// Makes bombs, and lends its inputs (the default `run_owned`), so the engine drops them itself.
struct Bombs;

impl Runner for Bombs {
    type Value = Bomb;
    type Error = String;

    fn run(&self, _task: TaskId, _inputs: &[Bomb]) -> Result<Bomb, String> {
        Ok(Bomb)
    }
}

/// Panics when told a task finished.
struct Grumpy;

impl belated_core::Observer for Grumpy {
    fn task_started(&self, _task: TaskId, _worker: Option<usize>) {}

    fn task_finished(&self, task: TaskId, _worker: Option<usize>, _succeeded: bool) {
        panic!("observer saw {task}");
    }
}

#[test]
fn panics_in_drops_and_observers_fail_the_job_and_no_worker_is_lost() {
    let pool = ThreadPool::new(1, Arc::new(PlainHost)).unwrap();
    let deps = || Graph::from_deps::<String, _, _>([vec![], vec![TaskId(0)]]).unwrap();
    for _ in 0..3 {
        let handle = pool.submit(deps(), vec![TaskId(1)], Bombs);
        assert!(handle.wait_timeout(TIMEOUT), "a worker was lost");
        match handle.result() {
            Err(Error::Panic { task, message }) => {
                assert_eq!((task, message.as_str()), (TaskId(1), "bomb went off"))
            }
            other => panic!("expected a panic, got {other:?}"),
        }
        let observer = Some(Arc::new(Grumpy) as Arc<dyn belated_core::Observer>);
        let graph = Graph::from_deps::<String, _, _>([vec![]]).unwrap();
        let handle = pool.submit_observed(
            graph,
            vec![TaskId(0)],
            Arc::new(Arithmetic::new()),
            observer,
        );
        assert!(handle.wait_timeout(TIMEOUT), "a worker was lost");
        assert!(
            matches!(handle.result(), Err(Error::Panic { task: TaskId(0), ref message }) if message == "observer saw #0")
        );
    }
    let inline = std::panic::catch_unwind(|| run_inline(deps(), vec![TaskId(1)], Bombs));
    assert!(matches!(inline, Ok(Err(Error::Panic { .. }))));
}

#[test]
fn a_helper_runs_its_jobs_tasks_while_every_worker_is_busy() {
    let pool = ThreadPool::new(1, Arc::new(PlainHost)).unwrap();
    let gate = Arc::new((parking_lot::Mutex::new(false), parking_lot::Condvar::new()));
    let started = Arc::new(AtomicUsize::new(0));
    let one = Graph::from_deps::<String, _, _>([vec![]]).unwrap();
    let blocker = pool.submit(one, vec![TaskId(0)], Gate(gate.clone(), started.clone()));
    while started.load(SeqCst) == 0 {
        std::thread::yield_now();
    }
    let (deps, root) = tree(64);
    let graph = Graph::from_deps::<String, _, _>(deps.clone()).unwrap();
    let handle = pool.submit_helped(graph, vec![root], Arc::new(Arithmetic::new()), None);
    assert!(handle.help(None), "the helper ran every task itself");
    assert_eq!(
        handle.result().unwrap()[0].number,
        sequential(&deps)[root.index()]
    );
    *gate.0.lock() = true;
    gate.1.notify_all();
    assert!(blocker.wait_timeout(TIMEOUT));
}

/// Leaves run until `quorum` of them run at once (or `patience` passes); records how many ever did.
struct Rendezvous {
    running: parking_lot::Mutex<usize>,
    changed: parking_lot::Condvar,
    most: AtomicUsize,
    quorum: usize,
    patience: Duration,
}

impl Rendezvous {
    fn new(quorum: usize, patience: Duration) -> Arc<Self> {
        Arc::new(Rendezvous {
            running: parking_lot::Mutex::new(0),
            changed: parking_lot::Condvar::new(),
            most: AtomicUsize::new(0),
            quorum,
            patience,
        })
    }
}

impl Runner for Rendezvous {
    type Value = usize;
    type Error = String;

    fn run(&self, _task: TaskId, inputs: &[usize]) -> Result<usize, String> {
        if !inputs.is_empty() {
            return Ok(inputs.iter().sum());
        }
        let mut running = self.running.lock();
        *running += 1;
        self.most.fetch_max(*running, SeqCst);
        self.changed.notify_all();
        let met = !self
            .changed
            .wait_while_for(
                &mut running,
                |running| *running < self.quorum,
                self.patience,
            )
            .timed_out();
        // Once met, the quorum stays met for the others still checking.
        if !met {
            *running -= 1;
        }
        Ok(met as usize)
    }
}

/// `leaves` independent tasks and one that takes them all.
fn fan_in(leaves: usize) -> (Graph, TaskId) {
    let deps = (0..leaves)
        .map(|_| vec![])
        .chain([(0..leaves as u32).map(TaskId).collect()]);
    (
        Graph::from_deps::<String, _, _>(deps).unwrap(),
        TaskId(leaves as u32),
    )
}

/// The caller counts as one of the pool's threads, so a pool of one thread per core never has more
/// threads than cores busy with one computation.
#[test]
fn a_caller_and_the_workers_helping_it_are_no_more_than_the_pool_has_threads() {
    let pool = ThreadPool::new(2, Arc::new(PlainHost)).unwrap();
    let rendezvous = Rendezvous::new(3, Duration::from_millis(50));
    let (graph, root) = fan_in(6);
    let handle = pool.submit_helped(graph, vec![root], Arc::clone(&rendezvous), None);
    assert!(handle.help(Some(std::time::Instant::now() + TIMEOUT)));
    assert_eq!(handle.result().unwrap(), vec![0], "no three tasks ever met");
    assert_eq!(rendezvous.most.load(SeqCst), 2);
}

/// A caller that joins a job whose workers already fill the pool waits instead of running a third
/// thread beside them: the two leaves the workers hold wait for a third to meet them, which only an
/// oversubscribing caller could be.
#[test]
fn a_caller_joining_a_job_its_workers_fill_waits_for_room() {
    let pool = ThreadPool::new(2, Arc::new(PlainHost)).unwrap();
    let rendezvous = Rendezvous::new(3, Duration::from_millis(200));
    let (graph, root) = fan_in(3);
    let handle = pool.submit(graph, vec![root], Arc::clone(&rendezvous));
    let waited = std::time::Instant::now() + TIMEOUT;
    while *rendezvous.running.lock() < 2 {
        assert!(
            std::time::Instant::now() < waited,
            "the workers never took two leaves"
        );
        std::thread::yield_now();
    }
    assert!(handle.help(Some(std::time::Instant::now() + TIMEOUT)));
    assert_eq!(handle.result().unwrap(), vec![0], "three leaves met");
    assert_eq!(rendezvous.most.load(SeqCst), 2);
}

/// Whether the workers spin or sleep when work arrives, as many ready tasks as the pool has threads
/// run at once: the caller and every worker. Tasks that wait for each other finish.
#[test]
fn ready_tasks_always_find_every_thread_of_the_pool_spinning_or_asleep() {
    let pool = ThreadPool::new(3, Arc::new(PlainHost)).unwrap();
    for round in 0..200 {
        if round % 20 == 0 {
            // Long enough for the workers to stop spinning and sleep.
            std::thread::sleep(Duration::from_millis(20));
        }
        let rendezvous = Rendezvous::new(3, TIMEOUT);
        let (graph, root) = fan_in(3);
        let helped = round % 2 == 0;
        let handle = match helped {
            true => pool.submit_helped(graph, vec![root], Arc::clone(&rendezvous), None),
            false => pool.submit(graph, vec![root], Arc::clone(&rendezvous)),
        };
        let settled = match helped {
            true => handle.help(Some(std::time::Instant::now() + TIMEOUT)),
            false => handle.wait_timeout(TIMEOUT),
        };
        assert!(settled, "round {round} hung");
        assert_eq!(handle.result().unwrap(), vec![3], "round {round}");
    }
}

/// [`Arithmetic`] that fails at every task of `fail_at` (a panic for odd ids, an error for even) and
/// records which tasks ran.
struct FailingAt {
    inner: Arithmetic,
    fail_at: Vec<TaskId>,
    ran: parking_lot::Mutex<Vec<TaskId>>,
}

impl Runner for FailingAt {
    type Value = Value;
    type Error = String;

    fn run(&self, task: TaskId, inputs: &[Value]) -> Result<Value, String> {
        self.ran.lock().push(task);
        if self.fail_at.contains(&task) {
            if task.0 % 2 == 1 {
                panic!("task {task} panics");
            }
            return Err(format!("task {task} refuses"));
        }
        self.inner.run(task, inputs)
    }
}

/// Whether each task is one of `fail_at` or downstream of one.
fn upstream_failure(deps: &[Vec<TaskId>], fail_at: &[TaskId]) -> Vec<bool> {
    let mut failed: Vec<bool> = Vec::with_capacity(deps.len());
    for (i, ds) in deps.iter().enumerate() {
        let own = fail_at.contains(&TaskId(i as u32));
        failed.push(own || ds.iter().any(|d| failed[d.index()]));
    }
    failed
}

fn failed_task(failure: &Error<String>) -> TaskId {
    match failure {
        Error::Task { task, error } => {
            assert_eq!(error, &format!("task {task} refuses"));
            *task
        }
        Error::Panic { task, message } => {
            assert_eq!(message, &format!("task {task} panics"));
            *task
        }
        other => panic!("a task's failure, not {other:?}"),
    }
}

/// Whether `ancestor` is `task` or upstream of it.
fn reaches(deps: &[Vec<TaskId>], ancestor: TaskId, task: TaskId) -> bool {
    task == ancestor
        || deps[task.index()]
            .iter()
            .any(|&d| reaches(deps, ancestor, d))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn keeping_going_fails_exactly_the_outputs_downstream_of_a_failure(
        deps in dags(120),
        fails in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        pick in prop::collection::vec(any::<prop::sample::Index>(), 1..6),
        threads in 0usize..4,
    ) {
        let fail_at: Vec<TaskId> = fails.iter().map(|i| TaskId(i.index(deps.len()) as u32)).collect();
        let outputs: Vec<TaskId> = pick.iter().map(|i| TaskId(i.index(deps.len()) as u32)).collect();
        let expected = sequential(&deps);
        let failed = upstream_failure(&deps, &fail_at);
        let runner = Arc::new(FailingAt { inner: Arithmetic::new(), fail_at: fail_at.clone(), ran: Default::default() });
        let graph = Graph::from_deps::<String, _, _>(deps.clone()).unwrap();
        let got = if threads == 0 {
            belated_core::run_inline_each(graph, outputs.clone(), Arc::clone(&runner), None)
        } else {
            let pool = ThreadPool::new(threads, Arc::new(PlainHost)).unwrap();
            let handle = pool.submit_each(graph, outputs.clone(), Arc::clone(&runner), None);
            prop_assert!(handle.wait_timeout(TIMEOUT), "computation hung");
            handle.outputs()
        }
        .expect("only cancelling ends a job that keeps going");
        for (&output, value) in outputs.iter().zip(&got.values) {
            match value {
                Ok(value) => {
                    prop_assert!(!failed[output.index()], "{output} has a failure upstream");
                    prop_assert_eq!(value.number, expected[output.index()]);
                }
                Err(index) => {
                    prop_assert!(failed[output.index()], "{output} has no failure upstream");
                    let culprit = failed_task(&got.failures[*index]);
                    prop_assert!(fail_at.contains(&culprit));
                    prop_assert!(reaches(&deps, culprit, output), "{culprit} is not upstream of {output}");
                }
            }
        }
        let ran = runner.ran.lock().clone();
        let mut sorted = ran.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(sorted.len(), ran.len(), "each task runs at most once");
        for task in (0..deps.len() as u32).map(TaskId) {
            let upstream_failed = deps[task.index()].iter().any(|d| failed[d.index()]);
            prop_assert_eq!(ran.contains(&task), !upstream_failed, "{} ran or not", task);
        }
        let failed_ran: Vec<TaskId> = got.failures.iter().map(failed_task).collect();
        prop_assert!(failed_ran.iter().all(|task| fail_at.contains(task) && ran.contains(task)));
        drop(got);
        // A pool worker drops what the last task released just after the caller is woken.
        let deadline = std::time::Instant::now() + TIMEOUT;
        while runner.inner.counter.alive.load(SeqCst) != 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        prop_assert_eq!(runner.inner.counter.alive.load(SeqCst), 0, "every result is dropped");
    }
}

/// Each task waits until the test lets it go or its computation is cancelled; task 1 fails.
struct HeldUntilCancelled {
    started: parking_lot::Mutex<std::sync::mpsc::Sender<TaskId>>,
}

impl Runner for HeldUntilCancelled {
    type Value = u32;
    type Error = String;

    fn run(&self, task: TaskId, _inputs: &[u32]) -> Result<u32, String> {
        if task == TaskId(1) {
            return Err("task 1 refuses".into());
        }
        self.started.lock().send(task).unwrap();
        let token = belated_core::CancelToken::current().expect("on a pool thread");
        while !token.is_cancelled() {
            std::thread::yield_now();
        }
        Ok(task.0)
    }
}

#[test]
fn cancelling_ends_a_job_that_keeps_going_as_a_whole() {
    let pool = ThreadPool::new(2, Arc::new(PlainHost)).unwrap();
    let graph = Graph::from_deps::<String, _, _>([vec![], vec![], vec![TaskId(1)]]).unwrap();
    let (send, started) = std::sync::mpsc::channel();
    let runner = HeldUntilCancelled {
        started: send.into(),
    };
    let handle = pool.submit_each(graph, vec![TaskId(0), TaskId(2)], runner, None);
    assert_eq!(started.recv_timeout(TIMEOUT), Ok(TaskId(0)));
    assert!(!handle.wait_timeout(Duration::ZERO), "task 0 is held");
    handle.cancel();
    assert!(matches!(handle.outputs(), Err(Error::Cancelled)));
}

/// [`Arithmetic`] taking up to `size` ready tasks at once, recording each batch's tasks; the task
/// `lose_once` reports its inputs lost the first time it runs.
struct Batched {
    inner: Arithmetic,
    size: usize,
    batches: parking_lot::Mutex<Vec<Vec<TaskId>>>,
    lose_once: Option<TaskId>,
    lost: std::sync::atomic::AtomicBool,
}

impl Batched {
    fn new(size: usize) -> Self {
        Batched {
            inner: Arithmetic::new(),
            size,
            batches: Default::default(),
            lose_once: None,
            lost: Default::default(),
        }
    }
}

impl Runner for Batched {
    type Value = Value;
    type Error = String;

    fn run(&self, task: TaskId, inputs: &[Value]) -> Result<Value, String> {
        self.inner.run(task, inputs)
    }

    fn recompute_limit(&self) -> u32 {
        1
    }

    fn batch_size(&self, _ready: usize) -> usize {
        self.size
    }

    fn run_batch(
        &self,
        batch: Vec<(TaskId, Vec<Value>)>,
        settled: &mut belated_core::Settled<'_, Self>,
    ) {
        self.batches
            .lock()
            .push(batch.iter().map(|(task, _)| *task).collect());
        // Each task's result comes back with the one after it (the last alone), so that the engine
        // records groups while the rest of their batch still runs.
        let mut group = Vec::new();
        for (task, inputs) in batch {
            let result = if Some(task) == self.lose_once && !self.lost.swap(true, SeqCst) {
                Err(belated_core::InputsLost(vec![TaskId(0)]))
            } else {
                Ok(self.run(task, &inputs))
            };
            group.push((task, result, inputs));
            if group.len() == 2 {
                settled(std::mem::take(&mut group));
            }
        }
        if !group.is_empty() {
            settled(group);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    #[test]
    fn batched_runs_agree_with_sequential_evaluation(deps in dags(120), size in 2usize..6) {
        let expected = sequential(&deps);
        let last = TaskId(deps.len() as u32 - 1);
        for pooled in [false, true] {
            let runner = Arc::new(Batched::new(size));
            let graph = Graph::from_deps::<String, _, _>(deps.clone()).unwrap();
            let got = if pooled {
                let pool = ThreadPool::new(2, Arc::new(PlainHost)).unwrap();
                let handle = pool.submit(graph, vec![last], Arc::clone(&runner));
                prop_assert!(handle.wait_timeout(TIMEOUT), "computation hung");
                handle.result().unwrap()
            } else {
                run_inline(graph, vec![last], Arc::clone(&runner)).unwrap()
            };
            prop_assert_eq!(got[0].number, expected[last.index()]);
            prop_assert_eq!(runner.inner.runs.load(SeqCst), deps.len(), "each task runs exactly once");
            let batches = runner.batches.lock();
            prop_assert!(batches.iter().all(|batch| (2..=size).contains(&batch.len())));
            let batched: usize = batches.iter().map(Vec::len).sum();
            prop_assert!(batched <= deps.len());
        }
    }
}

#[test]
fn ready_tasks_go_in_batches_whose_tasks_observers_see_start_together() {
    let deps: Vec<Vec<TaskId>> = (0..10)
        .map(|_| vec![])
        .chain([(0..10).map(TaskId).collect()])
        .collect();
    let runner = Arc::new(Batched::new(4));
    let log = Arc::new(Log::default());
    let graph = Graph::from_deps::<String, _, _>(deps).unwrap();
    let got = belated_core::run_inline_observed(
        graph,
        vec![TaskId(10)],
        Arc::clone(&runner),
        Some(log.clone()),
    )
    .unwrap();
    assert_eq!(got[0].number, 10 + (0..10).sum::<i64>());
    assert_eq!(
        *runner.batches.lock(),
        [vec![0, 1, 2, 3], vec![4, 5, 6, 7], vec![8, 9]]
            .map(|b| b.into_iter().map(TaskId).collect::<Vec<_>>())
    );
    let events: Vec<(u32, &str)> = log
        .0
        .lock()
        .iter()
        .map(|(t, _, what)| (t.0, *what))
        .collect();
    let first: Vec<(u32, &str)> = [0, 1, 2, 3]
        .map(|t| (t, "start"))
        .into_iter()
        .chain([0, 1, 2, 3].map(|t| (t, "ok")))
        .collect();
    assert_eq!(events[..8], first[..]);
    assert_eq!(events[events.len() - 2..], [(10, "start"), (10, "ok")]);
}

#[test]
fn a_task_of_a_batch_that_finds_its_inputs_lost_is_requeued_and_the_others_keep_their_results() {
    // 0 -> 1, 2, 3, 4 -> 5: one of the four middle tasks finds 0 lost, which is computed again.
    let deps = vec![
        vec![],
        vec![TaskId(0)],
        vec![TaskId(0)],
        vec![TaskId(0)],
        vec![TaskId(0)],
        (1..5).map(TaskId).collect(),
    ];
    let runner = Arc::new(Batched {
        lose_once: Some(TaskId(3)),
        ..Batched::new(4)
    });
    let expected = sequential(&deps);
    let graph = Graph::from_deps::<String, _, _>(deps).unwrap();
    let got = run_inline(graph, vec![TaskId(5)], Arc::clone(&runner)).unwrap();
    assert_eq!(got[0].number, expected[5]);
    // 3 lost its input and ran no further; 0 ran twice, 3 once, the rest once.
    assert_eq!(runner.inner.runs.load(SeqCst), 7);
    let batches = runner.batches.lock();
    assert_eq!(batches[0], (1..5).map(TaskId).collect::<Vec<_>>());
}

/// A runner whose batches settle their first task again and a task of no batch after the others,
/// and, if `leave_last`, never settle their last task.
struct Careless {
    leave_last: bool,
}

impl Runner for Careless {
    type Value = u32;
    type Error = String;

    fn run(&self, task: TaskId, _inputs: &[u32]) -> Result<u32, String> {
        Ok(task.0)
    }

    fn batch_size(&self, _ready: usize) -> usize {
        3
    }

    fn run_batch(
        &self,
        batch: Vec<(TaskId, Vec<u32>)>,
        settled: &mut belated_core::Settled<'_, Self>,
    ) {
        let (first, last) = (batch[0].0, batch[batch.len() - 1].0);
        let group = batch
            .into_iter()
            .filter(|&(task, _)| !self.leave_last || task != last)
            .map(|(task, inputs)| (task, Ok(Ok(task.0)), inputs))
            .collect();
        settled(group);
        settled(vec![
            (first, Ok(Ok(1000)), Vec::new()),
            (TaskId(99), Ok(Ok(1000)), Vec::new()),
        ]);
    }
}

#[test]
fn a_batch_task_settled_twice_or_not_of_the_batch_is_ignored_and_one_never_settled_fails() {
    let graph = || Graph::from_deps::<String, _, _>([vec![], vec![], vec![]]).unwrap();
    let outputs = vec![TaskId(0), TaskId(1), TaskId(2)];
    let got = run_inline(graph(), outputs.clone(), Careless { leave_last: false });
    assert_eq!(got.unwrap(), [0, 1, 2]);
    match run_inline(graph(), outputs, Careless { leave_last: true }) {
        Err(Error::Panic { task, message }) => {
            assert_eq!(task, TaskId(2));
            assert_eq!(
                message,
                "the runner returned no result for a task of its batch"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Leaves below `split` meet on `early`, the others on `late`; once an early leaf has run, the job
/// allows `then` threads, as a runner measuring its tasks ([`belated_core::concurrency::Ramp`]) would.
struct Capped {
    cap: AtomicUsize,
    then: usize,
    split: u32,
    early: Arc<Rendezvous>,
    late: Arc<Rendezvous>,
}

impl Capped {
    fn new(cap: usize, then: usize, split: u32, early: Duration, late: Duration) -> Arc<Self> {
        Arc::new(Capped {
            cap: AtomicUsize::new(cap),
            then,
            split,
            early: Rendezvous::new(2, early),
            late: Rendezvous::new(2, late),
        })
    }
}

impl Runner for Capped {
    type Value = usize;
    type Error = String;

    fn run(&self, task: TaskId, inputs: &[usize]) -> Result<usize, String> {
        if task.0 >= self.split {
            return self.late.run(task, inputs);
        }
        let met = self.early.run(task, inputs);
        self.cap.store(self.then, SeqCst);
        met
    }

    fn concurrency(&self) -> usize {
        self.cap.load(SeqCst)
    }
}

/// A runner allowing one thread gets one, on a pool of two: no two leaves ever overlap.
#[test]
fn a_job_runs_on_no_more_threads_than_its_runner_allows() {
    let pool = ThreadPool::new(2, Arc::new(PlainHost)).unwrap();
    let capped = Capped::new(1, 1, 0, TIMEOUT, Duration::from_millis(20));
    let (graph, root) = fan_in(4);
    let handle = pool.submit(graph, vec![root], Arc::clone(&capped));
    assert!(handle.wait_timeout(TIMEOUT));
    assert_eq!(handle.result().unwrap(), vec![0]);
    assert_eq!(capped.late.most.load(SeqCst), 1);
}

/// A count raised while the job runs lets the second thread in: the later leaves meet.
#[test]
fn a_runner_raising_its_count_gets_the_threads() {
    let pool = ThreadPool::new(2, Arc::new(PlainHost)).unwrap();
    let capped = Capped::new(1, 2, 1, Duration::from_millis(20), TIMEOUT);
    let (graph, root) = fan_in(3);
    let handle = pool.submit(graph, vec![root], Arc::clone(&capped));
    assert!(handle.wait_timeout(TIMEOUT * 2));
    assert_eq!(handle.result().unwrap(), vec![2], "leaf 1 and 2 met");
    assert_eq!(capped.late.most.load(SeqCst), 2);
}

/// A count lowered while two threads run makes one of them leave once its task is done: the first
/// two leaves meet, the later ones never overlap.
#[test]
fn a_runner_lowering_its_count_sends_a_thread_away() {
    let pool = ThreadPool::new(2, Arc::new(PlainHost)).unwrap();
    let capped = Capped::new(2, 1, 2, TIMEOUT, Duration::from_millis(20));
    let (graph, root) = fan_in(5);
    let handle = pool.submit(graph, vec![root], Arc::clone(&capped));
    assert!(handle.wait_timeout(TIMEOUT * 2));
    assert_eq!(
        handle.result().unwrap(),
        vec![2],
        "only the first two leaves met"
    );
    assert_eq!(capped.early.most.load(SeqCst), 2);
    assert_eq!(capped.late.most.load(SeqCst), 1);
}

/// Allows one thread until polled, then two: as a runner measuring its tasks does once none has
/// finished for a while ([`belated_core::concurrency::Ramp::watch`]).
struct RaisedWhenPolled {
    rendezvous: Arc<Rendezvous>,
    cap: AtomicUsize,
}

impl Runner for RaisedWhenPolled {
    type Value = usize;
    type Error = String;

    fn run(&self, task: TaskId, inputs: &[usize]) -> Result<usize, String> {
        self.rendezvous.run(task, inputs)
    }

    fn concurrency(&self) -> usize {
        self.cap.load(SeqCst)
    }

    fn poll(&self) -> bool {
        self.cap.swap(2, SeqCst) < 2
    }
}

/// Two leaves that wait for each other, on a job allowing one thread: the second can start only
/// once the waiting caller's poll raises the count and the pool's sleeping thread is woken for it.
#[test]
fn a_count_raised_at_a_poll_wakes_a_thread_for_tasks_that_wait_for_each_other() {
    let pool = Arc::new(ThreadPool::new(2, Arc::new(PlainHost)).unwrap());
    let runner = Arc::new(RaisedWhenPolled {
        rendezvous: Rendezvous::new(2, TIMEOUT),
        cap: AtomicUsize::new(1),
    });
    let (graph, root) = fan_in(2);
    let mut never = || None::<()>;
    let wait = Wait::new(&PlainHost).interrupt(Duration::from_millis(5), &mut never);
    let outcome =
        Session::<usize>::own(pool).run((graph, vec![root]), Arc::clone(&runner), None, wait);
    assert_eq!(outcome.unwrap().unwrap(), vec![2], "the two leaves met");
    assert_eq!(runner.rendezvous.most.load(SeqCst), 2);
}
