//! Running a plan: one work loop, used by the calling thread ([`run_inline`]) and by pool workers.
//!
//! Invariants:
//! - A job's state lives behind one mutex that is held only for bookkeeping (record a result, release
//!   inputs, pick the next task, clone its inputs). Tasks run, and values are dropped, outside it: a
//!   value's destructor may run arbitrary code (Python's `__del__`) that must not run under our locks.
//! - A worker that finishes a task picks its next one in the same critical section, so a busy worker
//!   never sleeps or hands off between tasks. It wakes one idle worker only when ready work is left over.
//! - The first failure settles the job at once: nothing new starts, the caller is woken, and tasks still
//!   running finish in the background with their results dropped. The pool stays usable.
//! - A worker thread lives inside [`ThreadHost::run_thread`] for its whole life and calls
//!   [`ThreadHost::block`] only around waiting for work, never per task.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::{Error, Graph, Schedule, TaskId};

/// What running one task means.
pub trait Runner: Send + Sync + 'static {
    /// A task's result. Cloned once per consumer, so it should be a cheap handle.
    type Value: Clone + Send + 'static;
    type Error: Send + 'static;

    /// Runs `task` on its inputs, given in the order of [`Graph::deps`].
    fn run(&self, task: TaskId, inputs: &[Self::Value]) -> Result<Self::Value, Self::Error>;

    /// The worker group where `task`, now ready, should run given its inputs (see
    /// [`ThreadPool::with_groups`]); `None` lets any worker take it. Called under the job's lock: keep it
    /// to a glance at the values.
    fn place(&self, task: TaskId, inputs: &mut dyn Iterator<Item = &Self::Value>) -> Option<usize> {
        let _ = (task, inputs);
        None
    }
}

/// Lets a caller keep a handle on its runner (to inspect it afterwards) while the job owns a clone.
impl<R: Runner> Runner for Arc<R> {
    type Value = R::Value;
    type Error = R::Error;

    fn run(&self, task: TaskId, inputs: &[Self::Value]) -> Result<Self::Value, Self::Error> {
        R::run(self, task, inputs)
    }

    fn place(&self, task: TaskId, inputs: &mut dyn Iterator<Item = &Self::Value>) -> Option<usize> {
        R::place(self, task, inputs)
    }
}

/// How a worker thread lives in its environment.
pub trait ThreadHost: Send + Sync + 'static {
    /// Wraps the worker's whole life (for Python: attach to the interpreter once).
    fn run_thread(&self, body: &mut dyn FnMut());
    /// Wraps a wait for work inside `run_thread` (for Python: let other threads run meanwhile).
    fn block(&self, wait: &mut (dyn FnMut() + Send));
}

/// Threads with no environment to enter.
#[derive(Debug, Default)]
pub struct PlainHost;

impl ThreadHost for PlainHost {
    fn run_thread(&self, body: &mut dyn FnMut()) {
        body()
    }

    fn block(&self, wait: &mut (dyn FnMut() + Send)) {
        wait()
    }
}

/// Watches tasks start and finish, for progress bars, profilers and dashboards. Called on the thread that
/// runs the task, outside the engine's locks; keep it quick, it is on the hot path.
pub trait Observer: Send + Sync {
    /// `worker` is the pool thread's index, or `None` for the calling thread of an inline run.
    fn task_started(&self, task: TaskId, worker: Option<usize>);
    fn task_finished(&self, task: TaskId, worker: Option<usize>, succeeded: bool);
}

/// Several observers as one, each told in turn.
pub struct Fanout(pub Vec<Arc<dyn Observer>>);

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Fanout").field(&self.0.len()).finish()
    }
}

impl Observer for Fanout {
    fn task_started(&self, task: TaskId, worker: Option<usize>) {
        for observer in &self.0 {
            observer.task_started(task, worker);
        }
    }

    fn task_finished(&self, task: TaskId, worker: Option<usize>, succeeded: bool) {
        for observer in &self.0 {
            observer.task_finished(task, worker, succeeded);
        }
    }
}

thread_local! {
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the pool worker running on this thread, if it is one.
pub fn current_worker() -> Option<usize> {
    WORKER_INDEX.get()
}

/// Whether the current thread is a pool worker. A task that computes a graph itself must not wait on the
/// pool it occupies (with every worker waiting, nothing would run): it runs its graph inline instead.
pub fn on_worker_thread() -> bool {
    WORKER_INDEX.get().is_some()
}

/// Runs a whole plan on the calling thread.
pub fn run_inline<R: Runner>(
    graph: Graph,
    outputs: Vec<TaskId>,
    runner: R,
) -> Result<Vec<R::Value>, Error<R::Error>> {
    run_inline_observed(graph, outputs, runner, None)
}

/// [`run_inline`], reporting every task to `observer`.
pub fn run_inline_observed<R: Runner>(
    graph: Graph,
    outputs: Vec<TaskId>,
    runner: R,
    observer: Option<Arc<dyn Observer>>,
) -> Result<Vec<R::Value>, Error<R::Error>> {
    let job = Job::new(graph, outputs, runner, observer, 1);
    job.work(None);
    job.take_result()
}

type TaskResult<R> = std::thread::Result<Result<<R as Runner>::Value, <R as Runner>::Error>>;

struct Job<R: Runner> {
    graph: Graph,
    outputs: Vec<TaskId>,
    runner: R,
    observer: Option<Arc<dyn Observer>>,
    state: Mutex<JobState<R>>,
    settled: Condvar,
    /// Ready tasks left, as of the last bookkeeping; lets idle workers find work without the job's lock.
    ready_hint: AtomicUsize,
}

struct JobState<R: Runner> {
    schedule: Schedule,
    values: Vec<Option<R::Value>>,
    /// `None` while running; once set, nothing new starts.
    outcome: Option<Result<(), Error<R::Error>>>,
}

/// What a bookkeeping step displaced; dropped only after the job's lock is released.
struct Garbage<R: Runner> {
    values: Vec<R::Value>,
    late_error: Option<Error<R::Error>>,
    /// Scratch: the inputs a finished task let go of.
    released: Vec<TaskId>,
}

impl<R: Runner> Job<R> {
    fn new(
        graph: Graph,
        outputs: Vec<TaskId>,
        runner: R,
        observer: Option<Arc<dyn Observer>>,
        groups: usize,
    ) -> Self {
        let schedule = Schedule::new(&graph, &outputs, groups);
        let ready = schedule.ready_len();
        let outcome = schedule.is_finished().then_some(Ok(()));
        Job {
            state: Mutex::new(JobState {
                values: std::iter::repeat_with(|| None).take(graph.len()).collect(),
                schedule,
                outcome,
            }),
            graph,
            outputs,
            runner,
            observer,
            settled: Condvar::new(),
            ready_hint: AtomicUsize::new(ready),
        }
    }

    fn work(&self, pool: Option<&PoolShared>) {
        let mut inputs: Vec<R::Value> = Vec::new();
        let mut garbage = Garbage::<R> {
            values: Vec::new(),
            late_error: None,
            released: Vec::new(),
        };
        let group = pool.and_then(|pool| Some(WORKER_INDEX.get()? / pool.threads_per_group));
        let mut finished: Option<(TaskId, TaskResult<R>)> = None;
        loop {
            let next = {
                let mut state = self.state.lock();
                if let Some((task, result)) = finished.take() {
                    self.record(&mut state, task, result, &mut garbage);
                }
                let next = match state.outcome {
                    None => state.schedule.next_ready(group),
                    Some(_) => None,
                };
                if let Some(task) = next {
                    inputs.extend(self.graph.deps(task).iter().map(|dep| {
                        state.values[dep.index()]
                            .clone()
                            .expect("a ready task's inputs are computed and not yet released")
                    }));
                }
                let ready = match state.outcome {
                    None => state.schedule.ready_len(),
                    Some(_) => 0,
                };
                self.ready_hint.store(ready, SeqCst);
                next
            };
            garbage.values.clear();
            garbage.late_error = None;
            let Some(task) = next else { return };
            if let Some(pool) = pool {
                if self.ready_hint.load(SeqCst) > 0 {
                    pool.wake_one();
                }
            }
            let worker = WORKER_INDEX.get();
            if let Some(observer) = &self.observer {
                observer.task_started(task, worker);
            }
            let result = catch_unwind(AssertUnwindSafe(|| self.runner.run(task, &inputs)));
            if let Some(observer) = &self.observer {
                observer.task_finished(task, worker, matches!(result, Ok(Ok(_))));
            }
            inputs.clear();
            finished = Some((task, result));
        }
    }

    fn record(
        &self,
        state: &mut JobState<R>,
        task: TaskId,
        result: TaskResult<R>,
        garbage: &mut Garbage<R>,
    ) {
        let failure = match result {
            Ok(Ok(value)) if state.outcome.is_some() => {
                garbage.values.push(value);
                return;
            }
            Ok(Ok(value)) => {
                let JobState {
                    schedule, values, ..
                } = state;
                values[task.index()] = Some(value);
                let place = |ready: TaskId| {
                    let mut inputs = self
                        .graph
                        .deps(ready)
                        .iter()
                        .filter_map(|dep| values[dep.index()].as_ref());
                    self.runner.place(ready, &mut inputs)
                };
                schedule.finish(&self.graph, task, place, |released| {
                    garbage.released.push(released)
                });
                for released in garbage.released.drain(..) {
                    garbage.values.extend(values[released.index()].take());
                }
                if !schedule.is_finished() {
                    return;
                }
                Ok(())
            }
            Ok(Err(error)) => Err(Error::Task { task, error }),
            Err(panic) => Err(Error::Panic {
                task,
                message: panic_message(panic.as_ref()),
            }),
        };
        if state.outcome.is_some() {
            garbage.late_error = failure.err();
        } else {
            state.outcome = Some(failure);
            self.settled.notify_all();
        }
    }

    fn wait_timeout(&self, timeout: Duration) -> bool {
        let mut state = self.state.lock();
        if state.outcome.is_none() {
            self.settled.wait_for(&mut state, timeout);
        }
        state.outcome.is_some()
    }

    fn cancel(&self) {
        let mut state = self.state.lock();
        if state.outcome.is_none() {
            state.outcome = Some(Err(Error::Cancelled));
            self.ready_hint.store(0, SeqCst);
            self.settled.notify_all();
        }
    }

    /// Takes the outcome, leaving the job settled as cancelled for any task still running.
    fn take_result(&self) -> Result<Vec<R::Value>, Error<R::Error>> {
        let (outcome, values) = {
            let mut state = self.state.lock();
            let outcome = state
                .outcome
                .replace(Err(Error::Cancelled))
                .unwrap_or(Err(Error::Cancelled));
            let values = std::mem::take(&mut state.values);
            (outcome, values)
        };
        outcome.map(|()| {
            self.outputs
                .iter()
                .map(|output| {
                    values[output.index()]
                        .clone()
                        .expect("outputs are never released")
                })
                .collect()
        })
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message.to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

trait Work: Send + Sync {
    fn has_ready(&self) -> bool;
    fn work_in(&self, pool: &PoolShared);
}

impl<R: Runner> Work for Job<R> {
    fn has_ready(&self) -> bool {
        self.ready_hint.load(SeqCst) > 0
    }

    fn work_in(&self, pool: &PoolShared) {
        self.work(Some(pool))
    }
}

struct PoolShared {
    state: Mutex<PoolState>,
    wake: Condvar,
    /// Consecutive worker indices form a placement group of this many threads.
    threads_per_group: usize,
    groups: usize,
    /// Workers waiting for work. Raised before a waiter looks for work and read after a job publishes
    /// ready tasks (both `SeqCst`), so at least one of the two sees the other and no wake-up is lost.
    idle: AtomicUsize,
    host: Arc<dyn ThreadHost>,
}

struct PoolState {
    jobs: Vec<Arc<dyn Work>>,
    shutdown: bool,
}

impl PoolShared {
    fn next_job(&self) -> Option<Arc<dyn Work>> {
        let mut picked = None;
        self.host.block(&mut || {
            let mut state = self.state.lock();
            picked = loop {
                if state.shutdown {
                    break None;
                }
                self.idle.fetch_add(1, SeqCst);
                let found = state.jobs.iter().find(|job| job.has_ready()).cloned();
                if found.is_none() {
                    self.wake.wait(&mut state);
                }
                self.idle.fetch_sub(1, SeqCst);
                if found.is_some() {
                    break found;
                }
            };
        });
        picked
    }

    fn wake_one(&self) {
        if self.idle.load(SeqCst) > 0 {
            let _state = self.state.lock();
            self.wake.notify_one();
        }
    }
}

/// A fixed set of worker threads shared by every computation submitted to it.
pub struct ThreadPool {
    shared: Arc<PoolShared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads.lock().len())
            .finish()
    }
}

impl ThreadPool {
    pub fn new(threads: usize, host: Arc<dyn ThreadHost>) -> std::io::Result<Self> {
        Self::with_groups(1, threads, host)
    }

    /// A pool of `groups` placement groups of `threads_per_group` threads each (worker indices
    /// `g * threads_per_group ..`), for runners whose results live with a group (a worker process)
    /// and which [`Runner::place`] tasks near their inputs.
    pub fn with_groups(
        groups: usize,
        threads_per_group: usize,
        host: Arc<dyn ThreadHost>,
    ) -> std::io::Result<Self> {
        let (groups, threads_per_group) = (groups.max(1), threads_per_group.max(1));
        let threads = groups * threads_per_group;
        let pool = ThreadPool {
            shared: Arc::new(PoolShared {
                threads_per_group,
                groups,
                state: Mutex::new(PoolState {
                    jobs: Vec::new(),
                    shutdown: false,
                }),
                wake: Condvar::new(),
                idle: AtomicUsize::new(0),
                host,
            }),
            threads: Mutex::new(Vec::with_capacity(threads)),
        };
        for i in 0..threads {
            let shared = Arc::clone(&pool.shared);
            let handle = std::thread::Builder::new()
                .name(format!("belated-worker-{i}"))
                .spawn(move || {
                    WORKER_INDEX.set(Some(i));
                    let host = Arc::clone(&shared.host);
                    host.run_thread(&mut || {
                        while let Some(job) = shared.next_job() {
                            job.work_in(&shared);
                        }
                    });
                })?;
            pool.threads.lock().push(handle);
        }
        Ok(pool)
    }

    pub fn threads(&self) -> usize {
        self.threads.lock().len()
    }

    pub fn submit<R: Runner>(&self, graph: Graph, outputs: Vec<TaskId>, runner: R) -> JobHandle<R> {
        self.submit_observed(graph, outputs, runner, None)
    }

    /// [`ThreadPool::submit`], reporting every task to `observer`.
    pub fn submit_observed<R: Runner>(
        &self,
        graph: Graph,
        outputs: Vec<TaskId>,
        runner: R,
        observer: Option<Arc<dyn Observer>>,
    ) -> JobHandle<R> {
        let job = Arc::new(Job::new(
            graph,
            outputs,
            runner,
            observer,
            self.shared.groups,
        ));
        let ready = job.ready_hint.load(SeqCst);
        {
            let mut state = self.shared.state.lock();
            state.jobs.push(Arc::clone(&job) as Arc<dyn Work>);
            for _ in 0..ready {
                if !self.shared.wake.notify_one() {
                    break;
                }
            }
        }
        JobHandle {
            job,
            pool: Arc::clone(&self.shared),
        }
    }

    /// Stops the workers once their current tasks end, and joins them. Idempotent.
    pub fn shutdown(&self) {
        self.shared.state.lock().shutdown = true;
        self.shared.wake.notify_all();
        let mut threads = std::mem::take(&mut *self.threads.lock());
        self.shared.host.block(&mut || {
            for thread in threads.drain(..) {
                // A worker only ends by leaving its loop; a panic there has already been reported.
                let _ = thread.join();
            }
        });
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A computation submitted to a [`ThreadPool`]. Dropping it cancels the computation if still running.
pub struct JobHandle<R: Runner> {
    job: Arc<Job<R>>,
    pool: Arc<PoolShared>,
}

impl<R: Runner> std::fmt::Debug for JobHandle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobHandle").finish_non_exhaustive()
    }
}

impl<R: Runner> JobHandle<R> {
    /// Waits up to `timeout` for the computation to succeed or fail; returns whether it has.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.job.wait_timeout(timeout)
    }

    /// Stops the computation: nothing new starts; tasks already running finish in the background.
    pub fn cancel(&self) {
        self.job.cancel()
    }

    /// The outputs, in the order given at submission, or why there are none. Cancels first if the
    /// computation has not settled, so call it after [`JobHandle::wait_timeout`] returned `true`.
    pub fn result(self) -> Result<Vec<R::Value>, Error<R::Error>> {
        self.job.cancel();
        self.job.take_result()
    }
}

impl<R: Runner> Drop for JobHandle<R> {
    fn drop(&mut self) {
        self.job.cancel();
        let removed = {
            let mut state = self.pool.state.lock();
            let me = Arc::as_ptr(&self.job) as *const ();
            let position = state
                .jobs
                .iter()
                .position(|job| Arc::as_ptr(job) as *const () == me);
            position.map(|i| state.jobs.swap_remove(i))
        };
        drop(removed);
    }
}
