//! Running a plan: one work loop, used by the calling thread ([`run_inline`]), by pool workers, and by
//! a thread that helps with a computation it waits for ([`JobHandle::help`]).
//!
//! Invariants:
//! - A job's state lives behind one mutex that is held only for bookkeeping (record a result, release
//!   inputs, pick the next task, hand it its inputs). Tasks run, and values are dropped, outside it: a
//!   value's destructor may run arbitrary code (Python's `__del__`) that must not run under our locks.
//! - A task's inputs are cloned only for consumers that start before its last one; the last one takes
//!   the value itself (see [`Schedule::start`]), so a chain of tasks passes one value along.
//! - A worker that finishes a task picks its next one in the same critical section, so a busy worker
//!   never sleeps or hands off between tasks. It wakes one idle worker only when ready work is left over.
//! - At most as many threads work on one job as the pool has workers, a caller taking part in its own
//!   job counting as one: on a pool of one thread per core, the caller and the pool never run more
//!   threads than there are cores.
//! - A worker out of work spins a little (yielding its core) before it sleeps, and so does a caller
//!   waiting for its job, as rayon's threads do: work that comes back soon, the next small computation
//!   or the task another thread is finishing, is picked up without a system call to wake a thread.
//!   They spin only on a core the threads at work leave free: a spinner beside busy threads on every
//!   core would make the OS preempt them, perhaps one holding a job's lock, for its share.
//! - The first failure settles the job at once: nothing new starts, the caller is woken, the job's
//!   [`CancelToken`] is cancelled, and tasks still running finish in the background with their results
//!   dropped. The pool stays usable.
//! - Unless the job keeps going ([`ThreadPool::submit_each`], [`run_inline_each`]): then a task that
//!   fails (returns its error or panics) ends only itself and the tasks downstream of it, which never
//!   run; everything else runs, and each output gets its value or the failure that stopped it
//!   ([`Outputs`]). Cancelling, a deadline, and a panic in bookkeeping (a value's `Clone` or `Drop`,
//!   placement, an observer) still end the whole job.
//! - User code reaches the loop through tasks, values (`Clone`, `Drop`), placement and observers. A
//!   panic in any of them settles that job as [`Error::Panic`] naming the task concerned; it never
//!   unwinds through the loop, so no worker is lost and no job is left waiting for a task that ended.
//! - A worker thread lives inside [`ThreadHost::run_thread`] for its whole life and calls
//!   [`ThreadHost::block`] only around waiting for work, never per task.
//! - A pool of placement groups may grow and shrink while jobs run ([`ThreadPool::grow`],
//!   [`ThreadPool::shrink`]): new jobs are scheduled on the groups live when they start; the threads
//!   of a group shrunk away finish the task they run, take no other, and end (work placed on their
//!   group is taken by the others); a group grown back gets its thread again, or keeps one that had
//!   not ended yet, so a group never has two.

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rustc_hash::FxHashSet;

use crate::{Error, Graph, InputsLost, Schedule, TaskId};

/// What running one task means.
pub trait Runner: Send + Sync + 'static {
    /// A task's result. Cloned for each consumer but the last, so it should be a cheap handle.
    type Value: Clone + Send + 'static;
    /// A task's own failure, carried to the caller untouched.
    type Error: Send + 'static;

    /// Runs `task` on its inputs, given in the order of [`Graph::deps`].
    fn run(&self, task: TaskId, inputs: &[Self::Value]) -> Result<Self::Value, Self::Error>;

    /// Runs `task` on inputs it may take out of `inputs` (drain them): each input is this task's own,
    /// moved in at its last use or cloned for it. The default lends them to [`Runner::run`].
    fn run_owned(
        &self,
        task: TaskId,
        inputs: &mut Vec<Self::Value>,
    ) -> Result<Self::Value, Self::Error> {
        self.run(task, inputs)
    }

    /// Runs `task` as [`Runner::run_owned`] does, or reports that it could not because some of its
    /// inputs were lost after they were computed (with the worker process holding them), leaving
    /// `inputs` as they were: the engine recomputes those and runs `task` again
    /// ([`crate::recovery`]). The default never loses an input.
    fn run_recoverable(
        &self,
        task: TaskId,
        inputs: &mut Vec<Self::Value>,
    ) -> Result<Result<Self::Value, Self::Error>, InputsLost> {
        Ok(self.run_owned(task, inputs))
    }

    /// How many times one task's result may be lost and recomputed before the computation fails
    /// with [`Error::LostTooOften`].
    fn recompute_limit(&self) -> u32 {
        0
    }

    /// How many ready tasks a thread takes at once and hands to [`Runner::run_batch`], when `ready`
    /// more are waiting besides the one it took. Called under the job's lock. The default, 1, runs
    /// each task alone.
    fn batch_size(&self, ready: usize) -> usize {
        let _ = ready;
        1
    }

    /// Runs several ready tasks, each as [`Runner::run_recoverable`] does on its own inputs, and
    /// hands each task's result back to `settled` with the task and its inputs, exactly once, in
    /// groups as they come: the engine records a group at once, so a result never waits for the
    /// rest of its batch, and a task handed back ([`InputsLost::not_started`]: it did not run) is
    /// ready again for another thread. Observers see them all start before any finishes. The
    /// default runs them one after the other.
    fn run_batch(&self, batch: Vec<(TaskId, Vec<Self::Value>)>, settled: &mut Settled<'_, Self>) {
        for (task, mut inputs) in batch {
            let result = self.run_recoverable(task, &mut inputs);
            settled(vec![(task, result, inputs)]);
        }
    }

    /// How many threads may run this job's tasks at once, at most the pool's; read before each task
    /// is taken, so a runner may change it as it goes ([`crate::concurrency::Ramp`]). A thread over
    /// the count finishes its task and leaves the job. The default sets no bound of its own.
    fn concurrency(&self) -> usize {
        usize::MAX
    }

    /// Called now and then by the thread waiting for the job while it runs ([`JobHandle::poll`]);
    /// returns whether [`Runner::concurrency`] rose, so that idle threads are woken to take the
    /// room. A count that rises only as tasks finish needs no poll: the thread finishing a task
    /// wakes another while ready work and room are left. The default never raises it.
    fn poll(&self) -> bool {
        false
    }

    /// The worker group where `task`, now ready, should run given its inputs (see
    /// [`ThreadPool::with_groups`]); `None` lets any worker take it. Called under the job's lock: keep it
    /// to a glance at the values.
    fn place(&self, task: TaskId, inputs: &mut dyn Iterator<Item = &Self::Value>) -> Option<usize> {
        let _ = (task, inputs);
        None
    }
}

/// What [`Runner::run_recoverable`] returns for one task.
pub type Recoverable<R> = Result<Result<<R as Runner>::Value, <R as Runner>::Error>, InputsLost>;

/// Where [`Runner::run_batch`] hands back a group of its tasks, each with its result and inputs.
pub type Settled<'a, R> = dyn FnMut(Vec<(TaskId, Recoverable<R>, Vec<<R as Runner>::Value>)>) + 'a;

/// Lets a caller keep a handle on its runner (to inspect it afterwards) while the job owns a clone.
impl<R: Runner> Runner for Arc<R> {
    type Value = R::Value;
    type Error = R::Error;

    fn run(&self, task: TaskId, inputs: &[Self::Value]) -> Result<Self::Value, Self::Error> {
        R::run(self, task, inputs)
    }

    fn run_owned(
        &self,
        task: TaskId,
        inputs: &mut Vec<Self::Value>,
    ) -> Result<Self::Value, Self::Error> {
        R::run_owned(self, task, inputs)
    }

    fn run_recoverable(
        &self,
        task: TaskId,
        inputs: &mut Vec<Self::Value>,
    ) -> Result<Result<Self::Value, Self::Error>, InputsLost> {
        R::run_recoverable(self, task, inputs)
    }

    fn recompute_limit(&self) -> u32 {
        R::recompute_limit(self)
    }

    fn batch_size(&self, ready: usize) -> usize {
        R::batch_size(self, ready)
    }

    fn run_batch(&self, batch: Vec<(TaskId, Vec<Self::Value>)>, settled: &mut Settled<'_, Self>) {
        R::run_batch(self, batch, settled)
    }

    fn concurrency(&self) -> usize {
        R::concurrency(self)
    }

    fn poll(&self) -> bool {
        R::poll(self)
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
/// runs the task, outside the engine's locks; keep it quick, it is on the hot path. A panic in it fails
/// the computation with [`Error::Panic`] for the task it was told about.
pub trait Observer: Send + Sync {
    /// `task` starts on pool worker `worker`, or on a thread outside the pool (`None`: the caller).
    fn task_started(&self, task: TaskId, worker: Option<usize>);
    /// `task` ended, with a result (`succeeded`) or without: an error, a panic, or inputs found lost.
    fn task_finished(&self, task: TaskId, worker: Option<usize>, succeeded: bool);
    /// `task`'s last run is undone and it will start again: its result was lost after it finished
    /// (`succeeded`), or it found its own inputs lost (just reported finished, not `succeeded`). A
    /// count of finished tasks takes it back. The default does nothing.
    fn task_undone(&self, task: TaskId, succeeded: bool) {
        let _ = (task, succeeded);
    }
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

    fn task_undone(&self, task: TaskId, succeeded: bool) {
        for observer in &self.0 {
            observer.task_undone(task, succeeded);
        }
    }
}

/// A cooperative stop signal for the tasks of one computation, in the style of tokio's
/// `CancellationToken`. The engine cancels it when the computation fails, times out or is dropped; a
/// long task can look at [`CancelToken::current`] now and then and return early.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancels the token and every clone of it. Idempotent.
    pub fn cancel(&self) {
        self.0.store(true, SeqCst);
    }

    /// Whether the token was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(SeqCst)
    }

    /// The token of the computation whose task is running on this thread, if one is.
    pub fn current() -> Option<CancelToken> {
        CURRENT_TOKEN.with_borrow(Clone::clone)
    }
}

thread_local! {
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
    static CURRENT_TOKEN: RefCell<Option<CancelToken>> = const { RefCell::new(None) };
}

/// Makes a job's token [`CancelToken::current`] while one of its tasks runs, restoring the outer
/// task's token after (a task may compute a graph of its own).
struct TokenScope(Option<CancelToken>);

impl TokenScope {
    fn enter(token: &CancelToken) -> Self {
        TokenScope(CURRENT_TOKEN.replace(Some(token.clone())))
    }
}

impl Drop for TokenScope {
    fn drop(&mut self) {
        CURRENT_TOKEN.set(self.0.take());
    }
}

/// The index of the pool worker running on this thread, if it is one.
pub fn current_worker() -> Option<usize> {
    WORKER_INDEX.get()
}

/// Whether the current thread is a pool worker. A task that computes a graph itself must not just
/// wait on the pool it occupies (with every worker waiting, nothing would run): it runs its graph
/// inline, or helps with it ([`JobHandle::help`]).
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
    inline_job(graph, outputs, runner, observer, false).take_result()
}

/// [`run_inline_observed`], keeping going past failures: a failed task ends only what is downstream
/// of it, and each output gets its value or the failure that stopped it.
pub fn run_inline_each<R: Runner>(
    graph: Graph,
    outputs: Vec<TaskId>,
    runner: R,
    observer: Option<Arc<dyn Observer>>,
) -> EachOutput<R> {
    inline_job(graph, outputs, runner, observer, true).take_outputs()
}

fn inline_job<R: Runner>(
    graph: Graph,
    outputs: Vec<TaskId>,
    runner: R,
    observer: Option<Arc<dyn Observer>>,
    keep_going: bool,
) -> Job<R> {
    let one = Arc::new(AtomicUsize::new(1));
    let job = Job::new(graph, outputs, runner, observer, 1, one, keep_going);
    job.running.fetch_add(1, SeqCst);
    job.work(None, None, None);
    job
}

/// Runs `f`, turning a panic into its message. A panic payload whose own `Drop` panics is leaked
/// rather than allowed to unwind further.
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let message = panic_message(payload.as_ref());
        if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
            std::mem::forget(again);
        }
        message
    })
}

/// Drops the inputs a task left (it panicked, or lent them), turning a panicking `Drop` into its message.
fn clear_inputs<V>(inputs: &mut Vec<V>) -> Result<(), String> {
    if inputs.is_empty() {
        return Ok(());
    }
    catch(|| inputs.clear())
}

/// Starts `task` in `schedule` and hands it its inputs: each value moved out at its last use, cloned
/// before.
fn start_with_inputs<V: Clone>(
    graph: &Graph,
    schedule: &mut Schedule,
    values: &mut [Option<V>],
    task: TaskId,
    inputs: &mut Vec<V>,
) {
    schedule.start(graph, task, |dep, last_use| {
        let slot = &mut values[dep.index()];
        let value = if last_use { slot.take() } else { slot.clone() };
        inputs.push(value.expect("a ready task's inputs are computed and not yet released"));
    });
}

/// A task's outcome as the loop sees it: its result, or the message of a panic.
type TaskResult<R> = Result<Result<<R as Runner>::Value, <R as Runner>::Error>, String>;

/// How a computation that kept going past failures ends: [`Outputs`], or why it ended as a whole.
pub type EachOutput<R> =
    Result<Outputs<<R as Runner>::Value, <R as Runner>::Error>, Error<<R as Runner>::Error>>;

/// What a computation that kept going past failures ends with.
#[derive(Debug)]
pub struct Outputs<V, E> {
    /// Each output, in the order asked for: its value, or the index in `failures` of the failure
    /// upstream of it (or of its own).
    pub values: Vec<Result<V, usize>>,
    /// The tasks that failed ([`Error::Task`] or [`Error::Panic`]), in the order they did.
    pub failures: Vec<Error<E>>,
}

struct Job<R: Runner> {
    graph: Graph,
    outputs: Vec<TaskId>,
    runner: R,
    observer: Option<Arc<dyn Observer>>,
    state: Mutex<JobState<R>>,
    /// Signalled when the job settles, and when ready work appears while a helper waits for some.
    changed: Condvar,
    /// Whether ready tasks are left (above zero: some are), as of the last bookkeeping; lets idle
    /// workers find work without the job's lock. At creation, how many are ready.
    ready_hint: AtomicUsize,
    /// Threads inside [`Job::work`]; idle workers join only while it is below [`Job::limit`].
    running: AtomicUsize,
    /// The pool's live threads (which a resize changes while the job runs); the runner may allow
    /// fewer ([`Runner::concurrency`]).
    limit: Arc<AtomicUsize>,
    /// Whether the outcome is set, for a helper spinning without the lock.
    settled: AtomicBool,
    cancel_token: CancelToken,
    /// Whether a failed task ends only what is downstream of it (see the module's invariants).
    keep_going: bool,
}

struct JobState<R: Runner> {
    schedule: Schedule,
    values: Vec<Option<R::Value>>,
    /// `None` while running; once set, nothing new starts.
    outcome: Option<Result<(), Error<R::Error>>>,
    /// Threads in [`JobHandle::help`] waiting for ready work and room to run it.
    helpers_waiting: usize,
    /// With `keep_going`: the failures so far, and for each task ended by one, its index.
    failures: Vec<Error<R::Error>>,
    ended_by: Vec<Option<usize>>,
}

/// What a bookkeeping step displaced, with the task each value came from; dropped only after the
/// job's lock is released.
struct Garbage<R: Runner> {
    values: Vec<(TaskId, R::Value)>,
    late_error: Option<Error<R::Error>>,
    /// Scratch: the inputs a finished task let go of.
    released: Vec<TaskId>,
    /// Tasks whose results were lost, to tell the observer.
    undone: Vec<TaskId>,
}

impl<R: Runner> Job<R> {
    fn new(
        graph: Graph,
        outputs: Vec<TaskId>,
        runner: R,
        observer: Option<Arc<dyn Observer>>,
        groups: usize,
        limit: Arc<AtomicUsize>,
        keep_going: bool,
    ) -> Self {
        let schedule = Schedule::new(&graph, &outputs, groups);
        let ready = schedule.ready_len();
        let outcome = schedule.is_finished().then_some(Ok(()));
        let settled = AtomicBool::new(outcome.is_some());
        Job {
            state: Mutex::new(JobState {
                values: std::iter::repeat_with(|| None).take(graph.len()).collect(),
                schedule,
                outcome,
                helpers_waiting: 0,
                failures: Vec::new(),
                ended_by: Vec::new(),
            }),
            graph,
            outputs,
            runner,
            observer,
            changed: Condvar::new(),
            ready_hint: AtomicUsize::new(ready),
            running: AtomicUsize::new(0),
            limit,
            settled,
            cancel_token: CancelToken::new(),
            keep_going,
        }
    }

    /// How many threads may be inside [`Job::work`] now.
    fn limit(&self) -> usize {
        self.limit
            .load(SeqCst)
            .min(self.runner.concurrency().max(1))
    }

    /// Runs ready tasks until none is left, the job settles or `deadline` passes. `pool` is woken
    /// when work is left over; `group` is this thread's placement group. The caller has counted
    /// itself in `running`; the count goes down under the job's lock as the thread finds nothing to
    /// do, so a thread that publishes ready work after that sees it gone and wakes a replacement.
    fn work(&self, pool: Option<&PoolShared>, group: Option<usize>, deadline: Option<Instant>) {
        let mut inputs: Vec<R::Value> = Vec::new();
        let mut garbage = Garbage::<R> {
            values: Vec::new(),
            late_error: None,
            released: Vec::new(),
            undone: Vec::new(),
        };
        let mut finished: Vec<(TaskId, TaskResult<R>)> = Vec::new();
        // Tasks that found inputs lost, with the inputs they were handed.
        let mut requeued: Vec<(TaskId, InputsLost, Vec<R::Value>)> = Vec::new();
        // The tasks taken with the first when the runner runs batches, with their inputs.
        let mut batch: Vec<(TaskId, Vec<R::Value>)> = Vec::new();
        // Once per visit rather than per task: the token's count is shared by every thread on the
        // job, and touching it per task would pass its cache line between them.
        let _scope = TokenScope::enter(&self.cancel_token);
        // Whether this thread's group was shrunk away: it leaves, and hands the work left over on.
        let mut retired = false;
        loop {
            // The task to blame if user code (`place`, `Clone`) panics during bookkeeping.
            let mut blame = finished
                .first()
                .map(|(task, _)| *task)
                .or(requeued.first().map(|(task, ..)| *task));
            let picked = catch(|| {
                let mut state = self.state.lock();
                for (task, result) in finished.drain(..) {
                    blame = Some(task);
                    self.record(&mut state, task, result, &mut garbage);
                }
                for (task, lost, handed) in requeued.drain(..) {
                    blame = Some(task);
                    self.requeue(&mut state, task, lost, handed, &mut garbage);
                }
                // A thread over the runner's count leaves: the count and the leaving both change
                // only under the lock, so never more leave than the count is exceeded by.
                retired = pool.is_some_and(|pool| pool.group_retired(group));
                let open = state.outcome.is_none()
                    && deadline.is_none_or(|deadline| Instant::now() < deadline)
                    && self.running.load(SeqCst) <= self.limit()
                    && !retired;
                let next = if open {
                    state.schedule.next_ready(group)
                } else {
                    None
                };
                if let Some(task) = next {
                    blame = Some(task);
                    let JobState {
                        schedule, values, ..
                    } = &mut *state;
                    start_with_inputs(&self.graph, schedule, values, task, &mut inputs);
                    let more = self
                        .runner
                        .batch_size(schedule.ready_len())
                        .saturating_sub(1);
                    for _ in 0..more {
                        let Some(task) = schedule.next_ready(group) else {
                            break;
                        };
                        blame = Some(task);
                        let mut handed = Vec::new();
                        start_with_inputs(&self.graph, schedule, values, task, &mut handed);
                        batch.push((task, handed));
                    }
                }
                let ready = if state.outcome.is_none() {
                    state.schedule.ready_len()
                } else {
                    0
                };
                // Readers only ask whether work is ready: writing every new count would pass the
                // hint's cache line between the job's threads on every task.
                if (self.ready_hint.load(SeqCst) > 0) != (ready > 0) {
                    self.ready_hint.store(ready, SeqCst);
                }
                let running = match next {
                    Some(_) => self.running.load(SeqCst),
                    None => self.running.fetch_sub(1, SeqCst) - 1,
                };
                // A helper waits for ready work and for room: both change only here, under the lock.
                if ready > 0 && running < self.limit() && state.helpers_waiting > 0 {
                    self.changed.notify_all();
                }
                next
            });
            self.take_out(&mut garbage);
            let task = match picked {
                Ok(Some(task)) => task,
                Ok(None) => {
                    if let Some(pool) = pool.filter(|_| retired) {
                        if self.ready_hint.load(SeqCst) > 0 {
                            pool.wake_one();
                        }
                    }
                    return;
                }
                Err(message) => {
                    let task = blame.expect("bookkeeping runs user code only for a task");
                    self.fail(task, message);
                    // Inputs handed out before the panic; the job has failed already.
                    let _ = clear_inputs(&mut inputs);
                    for (_, mut handed) in batch.drain(..) {
                        let _ = clear_inputs(&mut handed);
                    }
                    continue;
                }
            };
            if let Some(pool) = pool {
                if self.ready_hint.load(SeqCst) > 0 && self.running.load(SeqCst) < self.limit() {
                    pool.wake_one();
                }
            }
            if batch.is_empty() {
                match self.run_task(task, &mut inputs) {
                    Ok(result) => finished.push((task, result)),
                    Err(lost) => requeued.push((task, lost, std::mem::take(&mut inputs))),
                }
            } else {
                batch.insert(0, (task, std::mem::take(&mut inputs)));
                let batch = std::mem::take(&mut batch);
                self.run_batch(pool, batch, &mut finished, &mut requeued, &mut garbage);
            }
        }
    }

    /// Runs several tasks at once ([`Runner::run_batch`]) between their observer's calls, as
    /// [`Job::run_task`] runs one; a panic in the runner is the panic of each task it had not
    /// settled. A group settled while others of the batch still run is recorded at once (its
    /// dependents and the tasks handed back become ready for other threads); the last group is
    /// left in `finished` and `requeued` for the caller's next visit under the lock.
    fn run_batch(
        &self,
        pool: Option<&PoolShared>,
        batch: Vec<(TaskId, Vec<R::Value>)>,
        finished: &mut Vec<(TaskId, TaskResult<R>)>,
        requeued: &mut Vec<(TaskId, InputsLost, Vec<R::Value>)>,
        garbage: &mut Garbage<R>,
    ) {
        let worker = WORKER_INDEX.get();
        let tasks: Vec<TaskId> = batch.iter().map(|&(task, _)| task).collect();
        // A set, not a search of the list: a batch of a thousand tasks settled one by one made that
        // search the runner thread's costliest step.
        let mut unsettled: FxHashSet<TaskId> = tasks.iter().copied().collect();
        let started = batch
            .iter()
            .try_for_each(|&(task, _)| self.observe(|o| o.task_started(task, worker)));
        let ran = match started {
            Ok(()) => catch(|| {
                self.runner.run_batch(batch, &mut |group| {
                    for (task, attempt, mut inputs) in group {
                        if !unsettled.remove(&task) {
                            // Not of this batch, or settled twice: the runner's mistake, and
                            // the task's inputs go with it.
                            let _ = clear_inputs(&mut inputs);
                            continue;
                        }
                        match self.settle_run(task, worker, attempt.map(Ok), &mut inputs) {
                            Ok(result) => finished.push((task, result)),
                            Err(lost) => requeued.push((task, lost, inputs)),
                        }
                    }
                    if !unsettled.is_empty() {
                        self.record_now(pool, finished, requeued, garbage);
                    }
                });
            }),
            Err(message) => {
                for (task, mut inputs) in batch {
                    let attempt = Ok(Err(message.clone()));
                    if let Ok(result) = self.settle_run(task, worker, attempt, &mut inputs) {
                        finished.push((task, result));
                    }
                }
                return;
            }
        };
        let message = match ran {
            Ok(()) => "the runner returned no result for a task of its batch".to_string(),
            Err(message) => message,
        };
        // Their inputs went with the runner's panic.
        for task in tasks.into_iter().filter(|task| unsettled.contains(task)) {
            let attempt = Ok(Err(message.clone()));
            if let Ok(result) = self.settle_run(task, worker, attempt, &mut Vec::new()) {
                finished.push((task, result));
            }
        }
    }

    /// Records what a batch settled while the rest of it still runs, as the work loop does under
    /// the lock, and wakes a thread for the work it made ready.
    fn record_now(
        &self,
        pool: Option<&PoolShared>,
        finished: &mut Vec<(TaskId, TaskResult<R>)>,
        requeued: &mut Vec<(TaskId, InputsLost, Vec<R::Value>)>,
        garbage: &mut Garbage<R>,
    ) {
        let mut blame = None;
        let recorded = catch(|| {
            let mut state = self.state.lock();
            for (task, result) in finished.drain(..) {
                blame = Some(task);
                self.record(&mut state, task, result, garbage);
            }
            for (task, lost, handed) in requeued.drain(..) {
                blame = Some(task);
                self.requeue(&mut state, task, lost, handed, garbage);
            }
            let ready = if state.outcome.is_none() {
                state.schedule.ready_len()
            } else {
                0
            };
            if (self.ready_hint.load(SeqCst) > 0) != (ready > 0) {
                self.ready_hint.store(ready, SeqCst);
            }
            if ready > 0 && self.running.load(SeqCst) < self.limit() && state.helpers_waiting > 0 {
                self.changed.notify_all();
            }
        });
        self.take_out(garbage);
        if let Err(message) = recorded {
            let task = blame.expect("recording runs user code only for a task");
            self.fail(task, message);
        }
        if let Some(pool) = pool {
            if self.ready_hint.load(SeqCst) > 0 && self.running.load(SeqCst) < self.limit() {
                pool.wake_one();
            }
        }
    }

    /// Runs one task between its observer's calls; whatever of it panics becomes the task's panic.
    /// A task that found inputs lost leaves `inputs` in place for [`Job::requeue`].
    fn run_task(
        &self,
        task: TaskId,
        inputs: &mut Vec<R::Value>,
    ) -> Result<TaskResult<R>, InputsLost> {
        let worker = WORKER_INDEX.get();
        let attempt = self
            .observe(|o| o.task_started(task, worker))
            .and_then(|()| {
                catch(|| {
                    let result = self.runner.run_recoverable(task, inputs);
                    if result.is_ok() {
                        inputs.clear();
                    }
                    result
                })
            });
        let attempt = match attempt {
            Ok(result) => result.map(Ok),
            Err(message) => Ok(Err(message)),
        };
        self.settle_run(task, worker, attempt, inputs)
    }

    /// Tells the observer how a run of `task` ended and lets go of its inputs. A task that found
    /// inputs lost (the observer told it is undone) keeps them for [`Job::requeue`]; a panic of the
    /// observer fails the task, and a value it made goes.
    fn settle_run(
        &self,
        task: TaskId,
        worker: Option<usize>,
        attempt: Result<TaskResult<R>, InputsLost>,
        inputs: &mut Vec<R::Value>,
    ) -> Result<TaskResult<R>, InputsLost> {
        let result = match attempt {
            Err(lost) => {
                let told = self.observe(|o| {
                    o.task_finished(task, worker, false);
                    o.task_undone(task, false);
                });
                return match told {
                    Ok(()) => Err(lost),
                    Err(message) => {
                        let _ = clear_inputs(inputs);
                        Ok(Err(message))
                    }
                };
            }
            // The task's own panic wins over one of dropping its inputs.
            Ok(result) => {
                let cleared = clear_inputs(inputs);
                result.and_then(|result| cleared.map(|()| result))
            }
        };
        let succeeded = matches!(result, Ok(Ok(_)));
        Ok(
            match self.observe(|o| o.task_finished(task, worker, succeeded)) {
                Ok(()) => result,
                Err(message) => match result {
                    // The task's value goes: the observer's panic fails the job.
                    Ok(Ok(value)) => catch(|| drop(value)).and(Err(message)),
                    _ => Err(message),
                },
            },
        )
    }

    /// Calls the observer, if any; its panic comes back as the message.
    fn observe(&self, f: impl FnOnce(&dyn Observer)) -> Result<(), String> {
        match &self.observer {
            Some(observer) => catch(|| f(observer.as_ref())),
            None => Ok(()),
        }
    }

    /// Drops a step's garbage outside the lock; a value whose `Drop` panics fails the job, naming the
    /// task that made it.
    fn take_out(&self, garbage: &mut Garbage<R>) {
        if let Some(observer) = &self.observer {
            for task in garbage.undone.drain(..) {
                if let Err(message) = catch(|| observer.task_undone(task, true)) {
                    self.fail(task, message);
                }
            }
        }
        garbage.undone.clear();
        for (task, value) in garbage.values.drain(..) {
            if let Err(message) = catch(|| drop(value)) {
                self.fail(task, message);
            }
        }
        if let Some(late) = garbage.late_error.take() {
            // The job already failed; a second failure has nowhere to go, even a panicking one.
            let _ = catch(|| drop(late));
        }
    }

    fn fail(&self, task: TaskId, message: String) {
        let mut state = self.state.lock();
        self.settle(&mut state, Err(Error::Panic { task, message }));
    }

    /// Sets the outcome unless one is set (the first one wins), and tells everyone concerned.
    /// Returns the outcome it did not set.
    fn settle(
        &self,
        state: &mut JobState<R>,
        outcome: Result<(), Error<R::Error>>,
    ) -> Option<Error<R::Error>> {
        if state.outcome.is_some() {
            return outcome.err();
        }
        if outcome.is_err() {
            self.cancel_token.cancel();
        }
        state.outcome = Some(outcome);
        self.ready_hint.store(0, SeqCst);
        self.settled.store(true, SeqCst);
        self.changed.notify_all();
        None
    }

    fn record(
        &self,
        state: &mut JobState<R>,
        task: TaskId,
        result: TaskResult<R>,
        garbage: &mut Garbage<R>,
    ) {
        let outcome = match result {
            Ok(Ok(value)) if state.outcome.is_some() => {
                garbage.values.push((task, value));
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
                    if let Some(value) = values[released.index()].take() {
                        garbage.values.push((released, value));
                    }
                }
                if !schedule.is_finished() {
                    return;
                }
                Ok(())
            }
            Ok(Err(error)) => Err(Error::Task { task, error }),
            Err(message) => Err(Error::Panic { task, message }),
        };
        match outcome {
            Err(failure) if self.keep_going && state.outcome.is_none() => {
                self.end_downstream(state, task, failure, garbage)
            }
            outcome => garbage.late_error = self.settle(state, outcome),
        }
    }

    /// Ends `task`, which failed, and what is downstream of it, keeping the job going; settles it
    /// if nothing else is left to run.
    fn end_downstream(
        &self,
        state: &mut JobState<R>,
        task: TaskId,
        failure: Error<R::Error>,
        garbage: &mut Garbage<R>,
    ) {
        let JobState {
            schedule,
            values,
            failures,
            ended_by,
            ..
        } = state;
        let index = failures.len();
        failures.push(failure);
        if ended_by.is_empty() {
            ended_by.resize(self.graph.len(), None);
        }
        ended_by[task.index()] = Some(index);
        schedule.fail(
            &self.graph,
            task,
            |skipped| ended_by[skipped.index()] = Some(index),
            |released| garbage.released.push(released),
        );
        for released in garbage.released.drain(..) {
            if let Some(value) = values[released.index()].take() {
                garbage.values.push((released, value));
            }
        }
        if schedule.is_finished() {
            garbage.late_error = self.settle(state, Ok(()));
        }
    }

    /// Steps back after `task` found inputs `lost` ([`Schedule::requeue`]): what it was handed goes
    /// back where it is still the current result, and the results to compute again are dropped.
    fn requeue(
        &self,
        state: &mut JobState<R>,
        task: TaskId,
        lost: InputsLost,
        handed: Vec<R::Value>,
        garbage: &mut Garbage<R>,
    ) {
        let deps = self.graph.deps(task);
        if state.outcome.is_some() {
            garbage.values.extend(deps.iter().copied().zip(handed));
            return;
        }
        let JobState {
            schedule, values, ..
        } = &mut *state;
        for (&dep, value) in deps.iter().zip(handed) {
            let slot = &mut values[dep.index()];
            if slot.is_none() && !lost.0.contains(&dep) && schedule.input_current(task, dep) {
                *slot = Some(value);
            } else {
                garbage.values.push((dep, value));
            }
        }
        let limit = self.runner.recompute_limit();
        let requeued = schedule.requeue(
            &self.graph,
            task,
            &lost.0,
            limit,
            |held| values[held.index()].is_some(),
            &mut garbage.undone,
        );
        for &undone in &garbage.undone {
            if let Some(value) = values[undone.index()].take() {
                garbage.values.push((undone, value));
            }
        }
        if let Err((task, times)) = requeued {
            garbage.late_error = self.settle(state, Err(Error::LostTooOften { task, times }));
        }
    }

    fn wait_timeout(&self, timeout: Duration) -> bool {
        let mut state = self.state.lock();
        if state.outcome.is_none() {
            self.changed.wait_for(&mut state, timeout);
        }
        state.outcome.is_some()
    }

    fn cancel(&self) {
        let mut state = self.state.lock();
        self.settle(&mut state, Err(Error::Cancelled));
        // A job that succeeded has no task left to stop, but its token still means "over".
        self.cancel_token.cancel();
    }

    /// Takes the outcome, leaving the job settled as cancelled for any task still running; a job
    /// that kept going past failures fails with the first of them.
    fn take_result(&self) -> Result<Vec<R::Value>, Error<R::Error>> {
        let Outputs {
            values,
            mut failures,
        } = self.take_outputs()?;
        if failures.is_empty() {
            return Ok(values.into_iter().flatten().collect());
        }
        let first = failures.swap_remove(0);
        // A later failure, or a value of another output, has nowhere to go.
        let _ = catch(move || drop((values, failures)));
        Err(first)
    }

    /// Takes the outcome, leaving the job settled as cancelled for any task still running. Outputs
    /// move out (a value asked for twice is cloned for all but the last); a panic in that `Clone`, or
    /// in the `Drop` of a value left over, fails the result.
    fn take_outputs(&self) -> EachOutput<R> {
        let (outcome, mut values, failures, ended_by) = {
            let mut state = self.state.lock();
            let outcome = state
                .outcome
                .replace(Err(Error::Cancelled))
                .unwrap_or(Err(Error::Cancelled));
            (
                outcome,
                std::mem::take(&mut state.values),
                std::mem::take(&mut state.failures),
                std::mem::take(&mut state.ended_by),
            )
        };
        let mut outputs = Vec::with_capacity(self.outputs.len());
        let mut result = outcome.and_then(|()| {
            let mut uses = vec![0u32; values.len()];
            for output in &self.outputs {
                uses[output.index()] += 1;
            }
            for &output in &self.outputs {
                if let Some(failure) = ended_by.get(output.index()).copied().flatten() {
                    outputs.push(Err(failure));
                    continue;
                }
                let slot = &mut values[output.index()];
                uses[output.index()] -= 1;
                let value = match uses[output.index()] {
                    0 => slot.take(),
                    _ => catch(|| slot.clone()).map_err(|message| Error::Panic {
                        task: output,
                        message,
                    })?,
                };
                outputs.push(Ok(value.expect("outputs are never released")));
            }
            Ok(())
        });
        for (task, value) in values.into_iter().enumerate() {
            if let Some(value) = value {
                if let Err(message) = catch(|| drop(value)) {
                    let task = TaskId(task as u32);
                    result = result.and(Err(Error::Panic { task, message }));
                }
            }
        }
        match result {
            Ok(()) => Ok(Outputs {
                values: outputs,
                failures,
            }),
            Err(error) => {
                let _ = catch(|| drop((outputs, failures)));
                Err(error)
            }
        }
    }
}

/// The message a panic was raised with (`panic!("...")`), for [`Error::Panic`].
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        message.to_string()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "a panic with a non-string payload".to_string()
    }
}

trait Work: Send + Sync {
    /// Counts the calling worker in if the job has ready work and room for another thread; it must
    /// then [`Work::work_in`].
    fn try_enter(&self) -> bool;
    fn work_in(&self, pool: &PoolShared);
}

impl<R: Runner> Work for Job<R> {
    fn try_enter(&self) -> bool {
        self.ready_hint.load(SeqCst) > 0
            && self
                .running
                .fetch_update(SeqCst, SeqCst, |running| {
                    (running < self.limit()).then_some(running + 1)
                })
                .is_ok()
    }

    fn work_in(&self, pool: &PoolShared) {
        let group = WORKER_INDEX
            .get()
            .map(|worker| worker / pool.threads_per_group);
        pool.working.fetch_add(1, SeqCst);
        self.work(Some(pool), group, None);
        pool.working.fetch_sub(1, SeqCst);
    }
}

struct PoolShared {
    state: Mutex<PoolState>,
    wake: Condvar,
    /// Consecutive worker indices form a placement group of this many threads.
    threads_per_group: usize,
    /// The live groups: `0..groups`.
    groups: AtomicUsize,
    /// Their threads: how many may work on one job.
    threads: Arc<AtomicUsize>,
    /// Signalled when a thread of a group shrunk away ends, or a job leaves the pool.
    resized: Condvar,
    /// Workers asleep. Raised before a sleeper looks for work (and before it stops spinning), and
    /// read after a job publishes ready tasks (all `SeqCst`), so at least one of the two sees the
    /// other and no wake-up is lost.
    idle: AtomicUsize,
    /// Workers spinning: they notice a change of `posted` without being woken.
    spinning: AtomicUsize,
    /// Threads inside a job of this pool: workers, and callers helping.
    working: AtomicUsize,
    /// The machine's cores: spinners beyond what the working threads leave free go to sleep.
    cores: usize,
    /// Bumped whenever there may be new work for an idle worker (or the pool shuts down).
    posted: AtomicUsize,
    host: Arc<dyn ThreadHost>,
}

/// How many times an idle worker, or a caller waiting for its job, yields its core before it sleeps.
/// Long enough to bridge the gap between two small computations in a row, short enough that an
/// idle pool sleeps soon.
const SPIN_ROUNDS: usize = 64;

struct PoolState {
    jobs: Vec<Arc<dyn Work>>,
    shutdown: bool,
    /// Per worker index: whether its thread serves (it was started and has not ended).
    alive: Vec<bool>,
    /// The jobs that were running at the last shrink, which may have run tasks anywhere.
    before_shrink: Vec<Weak<dyn Work>>,
}

impl PoolShared {
    /// The next job to work on, counted in (see [`Work::try_enter`]); `None` at shutdown. Spins for
    /// [`SPIN_ROUNDS`], looking again each time work is posted, then sleeps until woken.
    fn next_job(&self) -> Option<Arc<dyn Work>> {
        let mut picked = None;
        self.host.block(&mut || {
            self.spinning.fetch_add(1, SeqCst);
            let mut seen = None;
            let mut spinning = true;
            for _ in 0..SPIN_ROUNDS {
                let posted = self.posted.load(SeqCst);
                if seen != Some(posted) {
                    seen = Some(posted);
                    if let Some(found) = self.find_job(&mut self.state.lock()) {
                        self.spinning.fetch_sub(1, SeqCst);
                        picked = found;
                        return;
                    }
                }
                // A spinner beside threads that already keep every core busy only takes a core
                // from them: one spinner too many goes to sleep at once. It looks for work
                // again after it counts itself asleep, so a job that posted work meanwhile, and
                // saw neither a spinner nor a sleeper, is not missed.
                if self
                    .spinning
                    .fetch_update(SeqCst, SeqCst, |spinners| {
                        (self.working.load(SeqCst) + spinners > self.cores).then_some(spinners - 1)
                    })
                    .is_ok()
                {
                    spinning = false;
                    break;
                }
                std::thread::yield_now();
            }
            let mut state = self.state.lock();
            // Asleep before no longer spinning: a publisher always sees one of the two.
            self.idle.fetch_add(1, SeqCst);
            if spinning {
                self.spinning.fetch_sub(1, SeqCst);
            }
            picked = loop {
                if let Some(found) = self.find_job(&mut state) {
                    break found;
                }
                self.wake.wait(&mut state);
            };
            self.idle.fetch_sub(1, SeqCst);
        });
        picked
    }

    /// `Some(None)` at shutdown or when the caller's group was shrunk away (it is then counted
    /// ended, under the same lock a grow looks at it with), `Some(job)` for a job the caller is
    /// counted in, `None` if no job has room.
    fn find_job(&self, state: &mut PoolState) -> Option<Option<Arc<dyn Work>>> {
        if state.shutdown {
            return Some(None);
        }
        if let Some(index) = WORKER_INDEX
            .get()
            .filter(|&index| self.retired(Some(index)))
        {
            state.alive[index] = false;
            self.resized.notify_all();
            return Some(None);
        }
        let job = state.jobs.iter().find(|job| job.try_enter())?;
        Some(Some(Arc::clone(job)))
    }

    /// Whether the thread of worker index `index` belongs to a group shrunk away.
    fn retired(&self, index: Option<usize>) -> bool {
        self.group_retired(index.map(|index| index / self.threads_per_group))
    }

    /// Whether `group` was shrunk away.
    fn group_retired(&self, group: Option<usize>) -> bool {
        group.is_some_and(|group| group >= self.groups.load(SeqCst))
    }

    /// Tells an idle worker that a job has ready work: a spinning one notices by itself, a sleeping
    /// one is woken.
    fn wake_one(&self) {
        self.posted.fetch_add(1, SeqCst);
        if self.spinning.load(SeqCst) == 0 && self.idle.load(SeqCst) > 0 {
            let _state = self.state.lock();
            self.wake.notify_one();
        }
    }

    /// A worker's life: take a job with ready work, work on it, repeat until shutdown. Nothing a job
    /// does unwinds out of [`Job::work`]; dropping the worker's hold on a job (which may drop the
    /// job's last values) is guarded the same way, so the worker outlives every job.
    fn serve(&self) {
        while let Some(job) = self.next_job() {
            job.work_in(self);
            let _ = catch(move || drop(job));
        }
    }
}

/// A fixed set of worker threads shared by every computation submitted to it. Dropping it stops the
/// workers once their current tasks end, and joins them (unless [`ThreadPool::detach_on_drop`]).
pub struct ThreadPool {
    shared: Arc<PoolShared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    join_on_drop: bool,
    /// Its threads are named `{name}-{index}`.
    name: String,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.threads.lock().len())
            .finish()
    }
}

impl ThreadPool {
    /// A pool of `threads` workers (at least one), named `belated-worker-{i}`, living in `host`.
    pub fn new(threads: usize, host: Arc<dyn ThreadHost>) -> std::io::Result<Self> {
        Self::named(1, threads, host, "belated-worker")
    }

    /// A pool of `groups` placement groups of `threads_per_group` threads each (worker indices
    /// `g * threads_per_group ..`), for runners whose results live with a group (a worker process)
    /// and which [`Runner::place`] tasks near their inputs.
    pub fn with_groups(
        groups: usize,
        threads_per_group: usize,
        host: Arc<dyn ThreadHost>,
    ) -> std::io::Result<Self> {
        Self::named(groups, threads_per_group, host, "belated-worker")
    }

    /// [`ThreadPool::with_groups`], with threads named `{name}-{i}`.
    pub fn named(
        groups: usize,
        threads_per_group: usize,
        host: Arc<dyn ThreadHost>,
        name: &str,
    ) -> std::io::Result<Self> {
        let (groups, threads_per_group) = (groups.max(1), threads_per_group.max(1));
        let threads = groups * threads_per_group;
        let pool = ThreadPool {
            shared: Arc::new(PoolShared {
                threads_per_group,
                groups: AtomicUsize::new(groups),
                threads: Arc::new(AtomicUsize::new(threads)),
                resized: Condvar::new(),
                state: Mutex::new(PoolState {
                    jobs: Vec::new(),
                    shutdown: false,
                    alive: vec![false; threads],
                    before_shrink: Vec::new(),
                }),
                wake: Condvar::new(),
                idle: AtomicUsize::new(0),
                spinning: AtomicUsize::new(0),
                working: AtomicUsize::new(0),
                cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
                posted: AtomicUsize::new(0),
                host,
            }),
            threads: Mutex::new(Vec::with_capacity(threads)),
            join_on_drop: true,
            name: name.to_string(),
        };
        {
            let mut state = pool.shared.state.lock();
            // On failure `pool` drops after the lock, stopping the threads already started.
            (0..threads).try_for_each(|index| pool.start_thread(&mut state, index))?;
        }
        Ok(pool)
    }

    /// Starts the thread of worker index `index`, counted alive.
    fn start_thread(&self, state: &mut PoolState, index: usize) -> std::io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let handle = std::thread::Builder::new()
            .name(format!("{}-{index}", self.name))
            .spawn(move || {
                WORKER_INDEX.set(Some(index));
                let host = Arc::clone(&shared.host);
                host.run_thread(&mut || shared.serve());
            })?;
        if state.alive.len() <= index {
            state.alive.resize(index + 1, false);
        }
        state.alive[index] = true;
        let mut threads = self.threads.lock();
        threads.retain(|thread| !thread.is_finished());
        threads.push(handle);
        Ok(())
    }

    /// How many placement groups are live.
    pub fn groups(&self) -> usize {
        self.shared.groups.load(SeqCst)
    }

    /// Makes the pool `groups` groups (at least as many as now): jobs started from now on are
    /// scheduled on them all, and jobs running take work on the new threads as well. A group whose
    /// thread has not ended since a shrink keeps it.
    pub fn grow(&self, groups: usize) -> std::io::Result<()> {
        let mut state = self.shared.state.lock();
        let live = self.groups();
        if groups <= live {
            return Ok(());
        }
        let per = self.shared.threads_per_group;
        for index in live * per..groups * per {
            if !state.alive.get(index).copied().unwrap_or(false) {
                self.start_thread(&mut state, index)?;
            }
        }
        // Raised once every thread is there: a thread of a group grown back that was about to
        // end sees the new count under this lock, and stays.
        self.resized_to(groups);
        Ok(())
    }

    fn resized_to(&self, groups: usize) {
        self.shared.groups.store(groups, SeqCst);
        let threads = groups * self.shared.threads_per_group;
        self.shared.threads.store(threads, SeqCst);
    }

    /// Shrinks the pool to its first `groups` groups (at least one): jobs started from now on are
    /// scheduled on them; the threads of the others finish the task they run and end, their work
    /// taken by the others. [`ThreadPool::wait_shrunk`] waits for them and for the jobs running now.
    pub fn shrink(&self, groups: usize) {
        let mut state = self.shared.state.lock();
        self.resized_to(groups.max(1).min(self.groups()));
        state.before_shrink = state.jobs.iter().map(Arc::downgrade).collect();
        self.shared.posted.fetch_add(1, SeqCst);
        self.shared.wake.notify_all();
    }

    /// Waits until the threads of the groups shrunk away have ended and the jobs that ran at the
    /// last shrink have left the pool: nothing runs on those groups' workers any more, and nothing
    /// will. Returns at once on a pool that grew back meanwhile and has no such thread or job.
    pub fn wait_shrunk(&self) {
        self.shared.host.block(&mut || {
            let mut state = self.shared.state.lock();
            loop {
                let first_retired = self.groups() * self.shared.threads_per_group;
                let threads_left = state.alive.iter().skip(first_retired).any(|&alive| alive);
                let PoolState {
                    jobs,
                    before_shrink,
                    ..
                } = &mut *state;
                before_shrink.retain(|before| {
                    jobs.iter()
                        .any(|job| std::ptr::addr_eq(Arc::as_ptr(job), before.as_ptr()))
                });
                if !threads_left && state.before_shrink.is_empty() {
                    return;
                }
                self.shared.resized.wait(&mut state);
            }
        });
    }

    /// Makes dropping the pool stop its workers without waiting for them: each ends once its current
    /// task does. For pools that are let go of on a caller's behalf (a [`crate::PoolRegistry`]'s), whose
    /// drop must not wait for a task of some computation that was cancelled.
    pub fn detach_on_drop(mut self) -> Self {
        self.join_on_drop = false;
        self
    }

    /// How many worker threads the pool runs: those of its live groups, none once shut down.
    pub fn threads(&self) -> usize {
        match self.shared.state.lock().shutdown {
            true => 0,
            false => self.groups() * self.shared.threads_per_group,
        }
    }

    /// Starts computing `outputs` of `graph` on the pool's workers.
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
        self.enqueue(graph, outputs, runner, observer, true, false)
    }

    /// [`ThreadPool::submit_observed`], keeping going past failures: a failed task ends only what is
    /// downstream of it; take each output's value or failure with [`JobHandle::outputs`].
    pub fn submit_each<R: Runner>(
        &self,
        graph: Graph,
        outputs: Vec<TaskId>,
        runner: R,
        observer: Option<Arc<dyn Observer>>,
    ) -> JobHandle<R> {
        self.enqueue(graph, outputs, runner, observer, true, true)
    }

    /// [`ThreadPool::submit_observed`] for a caller that will [`JobHandle::help`]: no worker is woken
    /// yet. The helper wakes workers only when it finds more ready work than it can take, so a small
    /// graph runs on the calling thread at about the cost of an inline run.
    pub fn submit_helped<R: Runner>(
        &self,
        graph: Graph,
        outputs: Vec<TaskId>,
        runner: R,
        observer: Option<Arc<dyn Observer>>,
    ) -> JobHandle<R> {
        self.enqueue(graph, outputs, runner, observer, false, false)
    }

    fn enqueue<R: Runner>(
        &self,
        graph: Graph,
        outputs: Vec<TaskId>,
        runner: R,
        observer: Option<Arc<dyn Observer>>,
        wake: bool,
        keep_going: bool,
    ) -> JobHandle<R> {
        let job = Arc::new(Job::new(
            graph,
            outputs,
            runner,
            observer,
            self.shared.groups.load(SeqCst),
            Arc::clone(&self.shared.threads),
            keep_going,
        ));
        let ready = if wake { job.ready_hint.load(SeqCst) } else { 0 };
        {
            let mut state = self.shared.state.lock();
            state.jobs.push(Arc::clone(&job) as Arc<dyn Work>);
            if ready > 0 {
                self.shared.posted.fetch_add(1, SeqCst);
            }
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

    /// Stops the workers once their current tasks end, and joins them (all but the calling thread,
    /// when a task drops the pool it runs on). Idempotent.
    pub fn shutdown(&self) {
        let mut threads = self.stop();
        let me = std::thread::current().id();
        threads.retain(|thread| thread.thread().id() != me);
        self.shared.host.block(&mut || {
            for thread in threads.drain(..) {
                // A worker only ends by leaving its loop, which nothing a job does can unwind.
                let _ = thread.join();
            }
        });
    }
}

impl ThreadPool {
    /// Tells the workers to end once their current tasks do, and hands over their handles.
    fn stop(&self) -> Vec<JoinHandle<()>> {
        self.shared.state.lock().shutdown = true;
        self.shared.posted.fetch_add(1, SeqCst);
        self.shared.wake.notify_all();
        std::mem::take(&mut *self.threads.lock())
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        match self.join_on_drop {
            true => self.shutdown(),
            false => drop(self.stop()),
        }
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

    /// Runs the computation's ready tasks on the calling thread, beside the pool's workers, until it
    /// settles or `deadline` passes; returns whether it settled. It counts as one of the pool's
    /// threads: with nothing ready, or with as many threads on the job as the pool has, it sleeps
    /// until it can take a task, so a pool worker that waits for a graph of its own this way keeps that graph moving
    /// even when every worker does the same (help-while-waiting, as rayon's `join` does). The
    /// deadline is checked between tasks: a task running on this thread is not interrupted.
    ///
    /// The calling thread runs tasks: the runner must allow that (for Python, a thread attached to
    /// the interpreter).
    pub fn help(&self, deadline: Option<Instant>) -> bool {
        let job = &self.job;
        loop {
            // The caller takes the place of a worker: with the job at its limit it only waits, so
            // caller and workers together never run more threads than the pool has.
            if job.try_enter() {
                self.pool.working.fetch_add(1, SeqCst);
                job.work(Some(&self.pool), None, deadline);
                self.pool.working.fetch_sub(1, SeqCst);
            }
            // The last tasks are often about to end on other threads: look again a few times
            // before sleeping, which would cost a wake-up when they do. Not while the job's own
            // threads fill the pool, whose cores the spinning would take from them.
            for _ in 0..SPIN_ROUNDS {
                if job.settled.load(SeqCst)
                    || job.running.load(SeqCst) >= job.limit()
                    || job.ready_hint.load(SeqCst) > 0
                    || deadline.is_some_and(|deadline| Instant::now() >= deadline)
                {
                    break;
                }
                std::thread::yield_now();
            }
            let mut state = job.state.lock();
            loop {
                if state.outcome.is_some() {
                    return true;
                }
                if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                    return false;
                }
                if state.schedule.ready_len() > 0 && job.running.load(SeqCst) < job.limit() {
                    break;
                }
                state.helpers_waiting += 1;
                match deadline {
                    Some(deadline) => {
                        job.changed.wait_until(&mut state, deadline);
                    }
                    None => job.changed.wait(&mut state),
                }
                state.helpers_waiting -= 1;
            }
        }
    }

    /// Lets the runner raise its count of threads ([`Runner::poll`]), and wakes threads for the room:
    /// the threads of a job at its count sleep, and nothing else would wake them while its tasks
    /// run (tasks waiting for each other may wait for exactly those threads).
    pub fn poll(&self) {
        let job = &self.job;
        if !job.runner.poll() || job.settled.load(SeqCst) {
            return;
        }
        // One woken worker that takes a task wakes the next while room and ready work are left; the
        // pool's workers take the room, so a thread in `help` waiting for it is not woken.
        if job.ready_hint.load(SeqCst) > 0 && job.running.load(SeqCst) < job.limit() {
            self.pool.wake_one();
        }
    }

    /// Stops the computation: nothing new starts, its [`CancelToken`] is cancelled, and tasks already
    /// running finish in the background.
    pub fn cancel(&self) {
        self.job.cancel()
    }

    /// The token the computation's tasks see as [`CancelToken::current`].
    pub fn cancel_token(&self) -> &CancelToken {
        &self.job.cancel_token
    }

    /// The outputs, in the order given at submission, or why there are none. Cancels first if the
    /// computation has not settled, so call it after [`JobHandle::wait_timeout`] returned `true`.
    pub fn result(self) -> Result<Vec<R::Value>, Error<R::Error>> {
        self.job.cancel();
        self.job.take_result()
    }

    /// Each output's value or the failure that stopped it, for a computation that kept going
    /// ([`ThreadPool::submit_each`]); `Err` when it ended as a whole (cancelled, say). Cancels first
    /// if the computation has not settled.
    pub fn outputs(self) -> EachOutput<R> {
        self.job.cancel();
        self.job.take_outputs()
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
            let removed = position.map(|i| state.jobs.swap_remove(i));
            self.pool.resized.notify_all();
            removed
        };
        // The job may hold values still (a computation dropped unfinished): their `Drop` must not
        // unwind into the caller, which has its answer already. A task still running finds the job
        // settled and drops its result itself.
        let leftovers = std::mem::take(&mut self.job.state.lock().values);
        let _ = catch(move || drop((removed, leftovers)));
    }
}
