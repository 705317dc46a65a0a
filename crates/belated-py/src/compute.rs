//! `compute` and `persist`: flatten what the arguments need, run it, put the results back in place.
//!
//! Threads: a pool per worker count, started on first use and kept while it is among the few most
//! recently used (belated-core's `PoolRegistry`). Processes: a local cluster of one-thread worker
//! processes per worker count, kept likewise; it is the runtime a Client's cluster runs on, with the
//! same locality and fault handling. The calling thread lets
//! go of the interpreter while it waits, waking every [`SIGNAL_POLL`] to let Python
//! deliver Ctrl-C, which cancels the computation. A compute called from inside a task runs inline on that
//! worker, since waiting on the pool it occupies could wait forever.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use belated_cluster::Running;
use belated_core::concurrency::{Ramp, WINDOW_TASKS};
use belated_core::{
    on_worker_thread, run_inline_each, run_inline_observed, Fanout, InputsLost, Observer, Outputs,
    Plan, PoolRegistry, RetryErrors, Runner, Session, StandIn, Stopped, TaskId, ThreadPool, Wait,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;
use rustc_hash::FxHashMap;

use crate::cluster::{
    close_processes_clusters, cluster_runner, forget_processes_clusters, kept_here,
    processes_cluster, Cluster, ClusterShared, Kept,
};
use crate::codec::{check_picklable, helper};
use crate::collect::Collector;
use crate::dashboard::{DashboardReport, Grouping, HubObserver};
use crate::delayed::{Delayed, Role};
use crate::diagnostics::{ComputeState, TaskGraph, Tracker};
use crate::errors::{catch_panics, to_python, CancelledError, WorkerStartError};
use crate::export::LegacyGraph;
use crate::gil::{self, now_ns, release, ITEMS_PER_CHECK};
use crate::host::{
    call_task, note_fork_in_child, CallsBack, Deadline, PythonHost, TaskGuard, TaskHooks,
    MAX_THREADS,
};
use crate::task::{Arg, Op, PyTask, PyValue, TaskNode};
use belated_cluster::directory::Held;

const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The threads scheduler's pools, by size.
static POOLS: PoolRegistry<usize> = PoolRegistry::new();

/// How many of a pool's threads take a computation's tasks, as measured (belated-core's [`Ramp`], on
/// the wall clock and the process's CPU time): task bodies that hold the interpreter (dask's
/// collections' numpy on small chunks or pandas, builtin functions) run no faster on a second thread,
/// and two threads handing it back and forth keep every other Python thread from it for tens of
/// milliseconds where one lets them in within a switch interval or two.
pub(crate) struct MeasuredRamp {
    ramp: Ramp,
    start: Instant,
    finished: AtomicU64,
    /// A task at least this long lets every thread run again ([`Ramp::widen`]).
    long_task: Option<Duration>,
    /// The pool's threads: a task is timed ([`ran_long`] reads a file) only while fewer may run.
    threads: usize,
}

/// Tasks are told to the ramp this many at a time, so that a trivial task pays one atomic increment
/// rather than a clock read and a lock.
const REPORTED_TOGETHER: u64 = 16;

/// The fewest tasks a window of a `Delayed` compute counts. Its tasks are anyone's: a graph of a few
/// dozen that sleep or mix waits with Python loops lost a fifth of its time running a comparison
/// window on one thread. A thousand tasks fill a 20 ms window only when each takes about 20 µs or
/// less (builtin functions, trivial Python functions), which is where a second thread gains nothing
/// and keeps other threads from the interpreter; longer tasks keep every thread unless a graph of
/// thousands of them shows one fewer does as well.
const DELAYED_WINDOW_TASKS: u64 = 1024;

/// A task of a `Delayed` compute this long lets every thread run again: a graph of thousands of short
/// tasks and then a few slow ones (a map, then uploads) would otherwise run the slow ones one at a
/// time, since they never fill a window to measure two threads again. Time the OS kept the task's
/// thread off the cores does not count ([`ran_long`]), nor does a task that started before the count
/// last went down ([`Ramp::widen_for_task`]).
const DELAYED_LONG_TASK: Duration = Duration::from_millis(5);

/// How long no task may finish before every thread runs again ([`Ramp::watch`]): tasks that wait for
/// each other (a barrier, a queue, an event) would otherwise wait forever on the threads left. Well
/// above how long a loaded machine keeps a runnable thread off its cores (tens of milliseconds), so
/// short tasks kept to one thread stay there; and a stall this long is waiting, or tasks long enough
/// that a second thread's handoffs of the interpreter cost little beside them.
const STALL: Duration = Duration::from_millis(200);

impl MeasuredRamp {
    /// A ramp over `threads` threads for dask collections' tasks, whose windows count a few.
    pub(crate) fn for_collections(threads: usize) -> Self {
        MeasuredRamp::new(threads, WINDOW_TASKS, None)
    }

    /// A ramp over `threads` threads for a `Delayed` compute's tasks: only short ones are measured.
    fn for_delayed(threads: usize) -> Self {
        MeasuredRamp::new(threads, DELAYED_WINDOW_TASKS, Some(DELAYED_LONG_TASK))
    }

    fn new(threads: usize, window_tasks: u64, long_task: Option<Duration>) -> Self {
        MeasuredRamp {
            ramp: Ramp::new(threads, window_tasks, STALL, Duration::ZERO, cpu_time()),
            start: Instant::now(),
            finished: AtomicU64::new(0),
            long_task,
            threads,
        }
    }

    /// What a task notes as it starts, for [`MeasuredRamp::task_done`].
    pub(crate) fn task_started(&self) -> u64 {
        self.ramp.narrowings()
    }

    /// Counts a task this thread just finished, which noted `started` as it started.
    pub(crate) fn task_done(&self, started: u64) {
        if self.long_task.is_some_and(|long| {
            self.ramp.allowed() < self.threads && ran_long(gil::since_task_start(), long)
        }) {
            self.ramp
                .widen_for_task(started, self.start.elapsed(), cpu_time());
        }
        if (self.finished.fetch_add(1, Ordering::Relaxed) + 1) % REPORTED_TOGETHER == 0 {
            self.ramp
                .tasks_done(REPORTED_TOGETHER, self.start.elapsed(), cpu_time);
        }
    }

    pub(crate) fn allowed(&self) -> usize {
        self.ramp.allowed()
    }

    /// For [`Runner::poll`]: whether the ramp let every thread run again, no task having finished
    /// for its stall bound.
    pub(crate) fn poll(&self) -> bool {
        let finished = self.finished.load(Ordering::Relaxed);
        self.ramp.watch(finished, self.start.elapsed(), cpu_time)
    }
}

thread_local! {
    /// This thread's time spent runnable but off the cores, as [`ran_long`] last read it.
    static WAITED_FOR_A_CORE: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// Whether a task that finished `wall` after it started was on its thread's core, or waiting for
/// something of its own (a sleep, I/O, a lock), for `long` or more. On a loaded machine the OS keeps
/// a runnable thread off the cores for 5 to 20 ms now and then: counting that as a long task widened a
/// ramp settled on one thread for builtin-function tasks several times a compute, each costing two
/// windows of the threads handing the interpreter back and forth.
///
/// The time off the cores is the thread's `run_delay` (Linux's schedstat) since this function last
/// read it (or since the thread started). That span holds the task, so all of a preemption during the
/// task is subtracted, and sometimes one from before it: then the next slow task widens, since this
/// read starts its span. Without schedstat, the wall time alone decides.
fn ran_long(wall: Duration, long: Duration) -> bool {
    if wall < long {
        return false;
    }
    let Some(waited) = waited_for_a_core() else {
        return true;
    };
    let before = WAITED_FOR_A_CORE.with(|cell| cell.replace(waited));
    wall.saturating_sub(waited.saturating_sub(before)) >= long
}

/// How long this thread has been runnable but off the cores since it started, if the OS says.
fn waited_for_a_core() -> Option<Duration> {
    // Fields: time on a core, time waiting for one, times scheduled (nanoseconds, nanoseconds, count).
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let waited = stat.split_whitespace().nth(1)?.parse().ok()?;
    Some(Duration::from_nanos(waited))
}

/// The CPU time this process has used, on all its threads.
fn cpu_time() -> Duration {
    Duration::from_nanos(now_ns(libc::CLOCK_PROCESS_CPUTIME_ID))
}

struct PyRunner {
    nodes: Arc<[Arc<TaskNode>]>,
    guard: TaskGuard,
    /// Set on the threads scheduler.
    ramp: Option<MeasuredRamp>,
    /// How often a task that raised runs again (a Client's `retries=`).
    retry: RetryErrors,
}

impl Runner for PyRunner {
    type Value = PyValue;
    type Error = PyErr;

    fn run(&self, task: TaskId, inputs: &[PyValue]) -> PyResult<PyValue> {
        let started = self.task_started();
        let value = Python::attach(|py| self.evaluate(py, task, inputs));
        self.task_done(started);
        value
    }

    /// Releases many inputs here rather than leaving them to the engine: a fan-in task's inputs are
    /// a million values, and other threads get the interpreter while they go. A task that raised and
    /// may run again ([`RetryErrors`]) keeps its inputs for that run.
    fn run_recoverable(
        &self,
        task: TaskId,
        inputs: &mut Vec<PyValue>,
    ) -> Result<PyResult<PyValue>, InputsLost> {
        let started = self.task_started();
        let value = Python::attach(|py| {
            let result = self.evaluate(py, task, inputs);
            if result.is_err() && self.retry.again(task) {
                return Err(InputsLost(Vec::new()));
            }
            if inputs.len() < ITEMS_PER_CHECK {
                return Ok(result);
            }
            let released = release(py, inputs.drain(..));
            Ok(result.and_then(|value| released.map(|()| value)))
        });
        self.task_done(started);
        value
    }

    fn recompute_limit(&self) -> u32 {
        self.retry.limit()
    }

    fn concurrency(&self) -> usize {
        self.ramp.as_ref().map_or(usize::MAX, MeasuredRamp::allowed)
    }

    fn poll(&self) -> bool {
        self.ramp.as_ref().is_some_and(MeasuredRamp::poll)
    }
}

impl PyRunner {
    fn task_started(&self) -> u64 {
        self.ramp.as_ref().map_or(0, MeasuredRamp::task_started)
    }

    fn task_done(&self, started: u64) {
        if let Some(ramp) = &self.ramp {
            ramp.task_done(started);
        }
    }

    fn evaluate(&self, py: Python<'_>, task: TaskId, inputs: &[PyValue]) -> PyResult<PyValue> {
        let node = &self.nodes[task.index()];
        let key = self.guard.before(py, node)?;
        let value = call_task(py, || node.payload().evaluate(py, inputs))?;
        self.guard.finished_in_time()?;
        if let Some(key) = key {
            self.guard.after(py, &key, &value)?;
        }
        Ok(PyValue(value.unbind()))
    }
}

/// The `belated.diagnostics` callbacks listening to one computation. Each callback object offers
/// `_callback`: `(start, start_state, pretask, posttask, finish)`, each a callable or None, as in dask.
/// As in dask's local scheduler, a callback counts as started once its `start` ran (or it had none), and
/// every started callback is finished, whatever the others or the computation did.
struct Listeners {
    sets: Vec<[Option<Py<PyAny>>; 5]>,
    started: usize,
    tracker: Arc<Tracker>,
    hooks: Arc<TaskHooks>,
}

impl Listeners {
    fn new(
        py: Python<'_>,
        nodes: &Arc<[Arc<TaskNode>]>,
        callbacks: &Bound<'_, PyTuple>,
    ) -> PyResult<Self> {
        let mut sets = Vec::with_capacity(callbacks.len());
        let mut profile = false;
        for callback in callbacks.iter() {
            profile |= callback
                .getattr("_wants_profile")
                .and_then(|w| w.is_truthy())
                .unwrap_or(false);
            let set: [Option<Py<PyAny>>; 5] = callback.getattr("_callback")?.extract()?;
            sets.push(set);
        }
        let perf_base: f64 = py
            .import("time")?
            .getattr("perf_counter")?
            .call0()?
            .extract()?;
        let tracker = Arc::new(Tracker::new(Arc::clone(nodes), profile));
        let graph = Py::new(py, TaskGraph::new(Arc::clone(nodes)))?;
        let state = Py::new(py, ComputeState::new(Arc::clone(&tracker), perf_base))?;
        let pick = |i: usize| {
            sets.iter()
                .filter_map(|set| set[i].as_ref().map(|f| f.clone_ref(py)))
                .collect::<Vec<_>>()
        };
        let hooks = Arc::new(TaskHooks {
            pretask: pick(2),
            posttask: pick(3),
            graph,
            state,
            calls: CallsBack::default(),
        });
        Ok(Listeners {
            sets,
            started: 0,
            tracker,
            hooks,
        })
    }

    /// Calls every `start`, then every `start_state`; stops at the first that raises.
    fn start(&mut self, py: Python<'_>) -> PyResult<()> {
        let graph = &self.hooks.graph;
        for set in &self.sets {
            if let Some(start) = &set[0] {
                start.call1(py, (graph,))?;
            }
            self.started += 1;
        }
        for start_state in self.sets.iter().filter_map(|set| set[1].as_ref()) {
            start_state.call1(py, (graph, &self.hooks.state))?;
        }
        Ok(())
    }

    /// Calls `finish` of every started callback, even when one raises; returns the first error.
    fn finish(&self, py: Python<'_>, errored: bool) -> PyResult<()> {
        self.hooks.calls.end(py);
        let args = (&self.hooks.graph, &self.hooks.state, errored);
        self.sets[..self.started]
            .iter()
            .filter_map(|set| set[4].as_ref())
            .map(|finish| finish.call1(py, args).map(drop))
            .fold(Ok(()), PyResult::and)
    }
}

enum Mode {
    Inline,
    Threads(usize),
    /// Worker processes: a Client's local cluster, or the processes scheduler's cluster of
    /// one-thread workers; and its pool (taken when the mode is chosen, so a closed cluster is
    /// refused before anything starts). The processes scheduler's cluster is held until the
    /// computation ends, since the registry may let go of it meanwhile.
    Cluster(Arc<ClusterShared>, Arc<ThreadPool>, Option<Arc<Cluster>>),
}

/// How many worker threads `num_workers` asks for: one per core when not given.
pub(crate) fn worker_count(num_workers: Option<i64>) -> PyResult<usize> {
    match num_workers {
        None => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
        Some(n) if n < 1 => Err(PyValueError::new_err(format!(
            "num_workers must be at least 1, got {n}"
        ))),
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|&n| n <= MAX_THREADS)
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "num_workers must be at most {MAX_THREADS}, got {n}"
                ))
            }),
    }
}

fn mode(
    py: Python<'_>,
    scheduler: &str,
    num_workers: Option<i64>,
    cluster: Option<Py<Cluster>>,
) -> PyResult<Mode> {
    if let Some(cluster) = cluster {
        let cluster = cluster.get();
        return Ok(Mode::Cluster(
            Arc::clone(&cluster.shared),
            cluster.pool()?,
            None,
        ));
    }
    let workers = || worker_count(num_workers);
    match scheduler {
        "sync" | "synchronous" | "single-threaded" => Ok(Mode::Inline),
        "threads" | "threading" | "threaded" => Ok(Mode::Threads(workers()?)),
        "processes" | "multiprocessing" => {
            let cluster = processes_cluster(py, workers()?)?;
            let (shared, pool) = (Arc::clone(&cluster.shared), cluster.pool()?);
            Ok(Mode::Cluster(shared, pool, Some(cluster)))
        }
        other => Err(PyValueError::new_err(format!(
            "unknown scheduler '{other}'; expected 'threads', 'processes' or 'sync'"
        ))),
    }
}

/// A session on the pool of `threads` worker threads, started on first use.
fn pool(threads: usize) -> PyResult<Session<'static, usize>> {
    POOLS.session(threads, || {
        ThreadPool::new(threads, Arc::new(PythonHost)).map_err(|e| {
            WorkerStartError::new_err(format!(
                "could not start {threads} worker threads ({e}); lower num_workers or use scheduler='sync'"
            ))
        })
    })
}

/// How to run one computation: the scheduler, and compute's options.
struct Run<'a, 'py> {
    mode: Mode,
    cancel: Option<&'a CancelToken>,
    callbacks: &'a Bound<'py, PyTuple>,
    deadline: Option<Deadline>,
    retries: usize,
    /// How many more times a task that raised runs.
    retry_errors: u32,
    /// Whether a failed task fails only the outputs downstream of it (a Client's futures).
    keep_going: bool,
    /// Whether the outputs stay in the cluster's workers, each coming back as a `Kept` (a Client's
    /// persist); without a cluster they come back as values.
    keep: bool,
    /// Whether the threads scheduler measures how many threads pay (dask collections' tasks).
    ramp: bool,
}

/// Lets another thread cancel a computation (a future's `cancel()`), which then raises CancelledError,
/// or one of its outputs alone (a future of a `map` cancelled alone), whose worker process is killed
/// while the others go on; and tells how many of its tasks are left (a Client's adapt scales with
/// them: a single future can stand for a graph of thousands).
#[pyclass(module = "belated._belated", frozen)]
pub(crate) struct CancelToken {
    cancelled: AtomicBool,
    /// The outputs cancelled alone, by index, not yet passed on to the running computation.
    alone: parking_lot::Mutex<Vec<usize>>,
    /// The tasks not finished yet, once the computation has its plan ([`NOT_PLANNED`] before).
    left: Arc<AtomicUsize>,
}

const NOT_PLANNED: usize = usize::MAX;

impl Default for CancelToken {
    fn default() -> Self {
        Self {
            cancelled: AtomicBool::default(),
            alone: parking_lot::Mutex::default(),
            left: Arc::new(AtomicUsize::new(NOT_PLANNED)),
        }
    }
}

impl CancelToken {
    fn take_alone(&self) -> Vec<usize> {
        std::mem::take(&mut self.alone.lock())
    }

    /// Counts down the `tasks` of the computation's plan as they finish.
    fn count_down(&self, tasks: usize) -> Arc<dyn Observer> {
        self.left.store(tasks, Ordering::Relaxed);
        Arc::new(Countdown(Arc::clone(&self.left)))
    }
}

/// The tasks of a computation not finished yet (see [`CancelToken::count_down`]).
struct Countdown(Arc<AtomicUsize>);

impl Observer for Countdown {
    fn task_started(&self, _task: TaskId, _worker: Option<usize>) {}

    fn task_finished(&self, _task: TaskId, _worker: Option<usize>, _succeeded: bool) {
        // Saturating: a task run again (a retry, a recompute) may report more ends than the plan has.
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            });
    }

    fn task_undone(&self, _task: TaskId, _succeeded: bool) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[pymethods]
impl CancelToken {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    fn cancel(&self) {
        self.cancelled.store(true, Ordering::SeqCst);
    }

    /// Cancels output `index` alone: on worker processes, the one running it is killed (and
    /// replaced) at once. A thread cannot be killed: there the task runs to its end.
    fn cancel_output(&self, index: usize) {
        self.alone.lock().push(index);
    }

    #[getter]
    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }

    /// The computation's tasks not finished yet; None before it has its plan.
    #[getter]
    fn tasks_left(&self) -> Option<usize> {
        Some(self.left.load(Ordering::Relaxed)).filter(|&left| left != NOT_PLANNED)
    }
}

/// What watches a pooled computation from the calling thread.
struct Watch<'a> {
    cancel: Option<&'a CancelToken>,
    deadline: Option<Deadline>,
    dashboard: &'a Option<Arc<HubObserver>>,
    /// Worker processes running the computation's tasks, killed when it is cancelled.
    running: Option<Arc<Running>>,
    /// The computation's outputs, for the ones cancelled alone (by index).
    outputs: Vec<TaskId>,
}

/// Runs `runner` over `plan` on the threads pool of `threads` workers, watched for Ctrl-C and the
/// deadline only: for graphs with no listeners or dashboard of their own (`belated.get`'s).
pub(crate) fn run_on_threads<R: Runner<Error = PyErr>>(
    py: Python<'_>,
    threads: usize,
    plan: (belated_core::Graph, Vec<TaskId>),
    runner: R,
    deadline: Option<Deadline>,
) -> PyResult<Result<Vec<R::Value>, belated_core::Error<PyErr>>> {
    let watch = Watch {
        cancel: None,
        deadline,
        dashboard: &None,
        running: None,
        outputs: Vec::new(),
    };
    let session = pool(threads)?;
    run_pooled(py, watch, |wait| session.run(plan, runner, None, wait))
}

/// Runs a computation on a pool (`run`, given how to wait) and waits, letting Python deliver Ctrl-C
/// (which cancels) and enforcing the deadline; a computation stopped early also kills the worker
/// processes running its tasks.
fn run_pooled<T>(
    py: Python<'_>,
    watch: Watch<'_>,
    run: impl FnOnce(Wait<'_, PyErr>) -> Result<T, Stopped<PyErr>>,
) -> PyResult<T> {
    // The outputs cancelled alone so far: a task is cancelled once every output that is it is.
    let mut alone = std::collections::HashSet::new();
    let mut interrupt = || {
        if let (Some(token), Some(running)) = (watch.cancel, &watch.running) {
            for index in token.take_alone() {
                let Some(&task) = watch.outputs.get(index) else {
                    continue;
                };
                alone.insert(index);
                let mut outputs = watch.outputs.iter().enumerate();
                if outputs.all(|(at, &output)| output != task || alone.contains(&at)) {
                    running.cancel_task(task);
                }
            }
        }
        interrupt_or_cancel(py, watch.cancel)
    };
    let wait = Wait::new(&PythonHost)
        .deadline(watch.deadline.map(|deadline| deadline.at))
        .interrupt(SIGNAL_POLL, &mut interrupt);
    let stopped = match run(wait) {
        Ok(result) => return Ok(result),
        Err(stopped) => stopped,
    };
    if let Some(running) = &watch.running {
        running.cancel();
    }
    if let Some(dashboard) = watch.dashboard {
        dashboard.end(false);
    }
    Err(match stopped {
        Stopped::Interrupted(interrupt) => interrupt,
        Stopped::TimedOut => watch.deadline.map_or_else(
            || CancelledError::new_err("the computation was cancelled"),
            |deadline| deadline.error(),
        ),
    })
}

/// Ctrl-C, or the computation's cancel, as the error that stops it.
fn interrupt_or_cancel(py: Python<'_>, cancel: Option<&CancelToken>) -> Option<PyErr> {
    match py.check_signals() {
        Err(interrupt) => Some(interrupt),
        Ok(()) if cancel.is_some_and(CancelToken::cancelled) => {
            Some(CancelledError::new_err("the computation was cancelled"))
        }
        Ok(()) => None,
    }
}

/// Every output's value, or (when the computation kept going) each output's value or the exception of
/// the task that failed it.
type Results = Ran<PyValue, Vec<PyResult<PyValue>>>;

/// Runs the graph the roots need and returns their results in order. Every callback that started is
/// finished, however the computation ends. Each `(stand_in, original)` of `stand_ins` takes the place
/// of `original` and of every task under the stand-in's key in the roots' graph, their inputs unrun.
fn execute(
    py: Python<'_>,
    (stand_ins, roots): (&[StandIn<PyTask>], &[Arc<TaskNode>]),
    run: Run<'_, '_>,
) -> PyResult<Results> {
    let mut grouping = Grouping::if_shown();
    let Plan {
        graph,
        nodes,
        outputs,
    } = py
        // Flattening needs no Python: let other threads run meanwhile (it takes a while for big graphs).
        .detach(|| match &mut grouping {
            Some(grouping) => {
                Plan::flatten_standing_in(stand_ins, roots, |task| grouping.visit(task))
            }
            None => Plan::flatten_standing_in(stand_ins, roots, |_| ()),
        })
        .map_err(|e| to_python(py, e, |_| String::new()))?;
    let nodes: Arc<[Arc<TaskNode>]> = nodes.into();
    if run.callbacks.is_empty() {
        return run_plan(py, (graph, nodes, outputs), grouping, run, None);
    }
    let mut listeners = Listeners::new(py, &nodes, run.callbacks)?;
    let result = listeners
        .start(py)
        .and_then(|()| run_plan(py, (graph, nodes, outputs), grouping, run, Some(&listeners)));
    let errored = match &result {
        Ok(Ran::All(_)) => false,
        Ok(Ran::Each(values)) => values.iter().any(Result::is_err),
        Err(_) => true,
    };
    let finished = listeners.finish(py, errored);
    let values = result?;
    finished.map(|()| values)
}

fn run_plan(
    py: Python<'_>,
    (graph, nodes, outputs): (belated_core::Graph, Arc<[Arc<TaskNode>]>, Vec<TaskId>),
    grouping: Option<Grouping>,
    run: Run<'_, '_>,
    listeners: Option<&Listeners>,
) -> PyResult<Results> {
    let Run {
        mode,
        cancel,
        callbacks: _,
        deadline,
        retries,
        retry_errors,
        keep_going,
        keep,
        ramp,
    } = run;
    // A compute called from inside a task runs inline on that worker.
    let mode = if on_worker_thread() {
        Mode::Inline
    } else {
        mode
    };
    let workers = match &mode {
        Mode::Inline => 0,
        Mode::Threads(threads) => *threads,
        Mode::Cluster(_, pool, _) => pool.threads(),
    };
    // The results earlier persists left in the cluster's workers, by task: those tasks do not run.
    let mut kept = FxHashMap::default();
    if let Mode::Cluster(cluster, ..) = &mode {
        kept = kept_here(py, cluster, &nodes)?;
        check_picklable(py, &nodes, |task| kept.contains_key(&(task as u32)))?;
        static NEW_COMPUTATION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        helper(py, &NEW_COMPUTATION, "new_computation")?.call0()?;
    }
    let dashboard = HubObserver::begin(py, grouping, &nodes, &graph, workers)?;
    let mut observers: Vec<Arc<dyn Observer>> = Vec::new();
    if let Some(listeners) = listeners {
        observers.push(Arc::clone(&listeners.tracker) as Arc<dyn Observer>);
    }
    if let Some(dashboard) = &dashboard {
        observers.push(Arc::clone(dashboard) as Arc<dyn Observer>);
    }
    if let Some(cancel) = cancel {
        observers.push(cancel.count_down(graph.len()));
    }
    let observer = match observers.len() {
        0 => None,
        1 => observers.pop(),
        _ => Some(Arc::new(Fanout(observers)) as Arc<dyn Observer>),
    };
    let guard = TaskGuard {
        check_signals: matches!(mode, Mode::Inline),
        deadline,
        // Keys are made only when a per-task callback will receive them.
        hooks: listeners
            .filter(|l| !l.hooks.pretask.is_empty() || !l.hooks.posttask.is_empty())
            .map(|l| Arc::clone(&l.hooks)),
    };
    let watch = Watch {
        cancel,
        deadline,
        dashboard: &dashboard,
        running: None,
        outputs: Vec::new(),
    };
    let tasks = graph.len();
    let runner = |guard| PyRunner {
        nodes: Arc::clone(&nodes),
        guard,
        ramp: None,
        retry: RetryErrors::new(retry_errors, tasks),
    };
    let result = match mode {
        Mode::Inline if keep_going => {
            run_inline_each(graph, outputs, runner(guard), observer).map(Ran::Each)
        }
        Mode::Inline => run_inline_observed(graph, outputs, runner(guard), observer).map(Ran::All),
        Mode::Threads(threads) => {
            let runner = PyRunner {
                ramp: Some(if ramp {
                    MeasuredRamp::for_collections(threads)
                } else {
                    MeasuredRamp::for_delayed(threads)
                }),
                ..runner(guard)
            };
            let (session, plan) = (pool(threads)?, (graph, outputs));
            run_pooled(py, watch, |wait| match keep_going {
                true => session
                    .run_each(plan, runner, observer, wait)
                    .map(|result| result.map(Ran::Each)),
                false => session
                    .run(plan, runner, observer, wait)
                    .map(|result| result.map(Ran::All)),
            })?
        }
        Mode::Cluster(cluster, pool, held) => {
            let runner = cluster_runner(
                &cluster,
                &nodes,
                (&graph, &outputs),
                (guard, kept),
                (retries, retry_errors, keep),
            );
            let watch = Watch {
                running: Some(Arc::clone(runner.running())),
                outputs: outputs.clone(),
                ..watch
            };
            let session = Session::<usize>::own(pool);
            let plan = (graph, outputs);
            let result = run_pooled(py, watch, |wait| match keep_going {
                true => session
                    .run_each(plan, runner, observer, wait)
                    .map(|result| result.map(Ran::Each)),
                false => session
                    .run(plan, runner, observer, wait)
                    .map(|result| result.map(Ran::All)),
            });
            py.detach(|| {
                cluster.flush_releases();
                // The last reference to a cluster the registry let go of stops its workers.
                drop(held);
            });
            let value = |held| match held {
                Held {
                    local: Some(value), ..
                } if !keep => Ok(value),
                // A result left in a worker: a persist's.
                held => Bound::new(py, Kept::new(held, &cluster))
                    .map(|kept| PyValue(kept.into_any().unbind())),
            };
            match result? {
                Err(error) => Err(error),
                Ok(Ran::All(values)) => Ok(Ran::All(
                    values.into_iter().map(value).collect::<PyResult<_>>()?,
                )),
                Ok(Ran::Each(Outputs { values, failures })) => {
                    let values = values
                        .into_iter()
                        .map(|held| match held {
                            Ok(held) => value(held).map(Ok),
                            Err(failure) => Ok(Err(failure)),
                        })
                        .collect::<PyResult<Vec<_>>>()?;
                    Ok(Ran::Each(Outputs { values, failures }))
                }
            }
        }
    };
    if let Some(dashboard) = &dashboard {
        dashboard.end(match &result {
            Ok(Ran::All(_)) => true,
            Ok(Ran::Each(outputs)) => outputs.failures.is_empty(),
            Err(_) => false,
        });
    }
    let key_of = |task: TaskId| nodes[task.index()].payload().key_string(py);
    let result = match result.map_err(|e| to_python(py, e, key_of))? {
        Ran::All(values) => Ran::All(values),
        Ran::Each(Outputs { values, failures }) => {
            let failures: Vec<PyErr> = failures
                .into_iter()
                .map(|failure| to_python(py, failure, key_of))
                .collect();
            Ran::Each(
                values
                    .into_iter()
                    .map(|value| value.map_err(|failure| failures[failure].clone_ref(py)))
                    .collect(),
            )
        }
    };
    // The compute's arguments hold every node (the roots hold the rest), so this lets go of none:
    // it only counts down a million handles, which needs no interpreter.
    py.detach(move || drop(nodes));
    Ok(result)
}

/// What a computation gives back: every output's value, as an engine run that stops at the first
/// failure returns them (moved on as they are: a million outputs would otherwise be copied into a
/// new vector at each step, with the interpreter held), or each output's value or failure, when it
/// kept going.
enum Ran<V, E> {
    All(Vec<V>),
    Each(E),
}

/// Computes the `Delayed` objects found in `objs` and returns `objs` with each replaced by its result,
/// or, with `persist`, by a `Delayed` that holds its result under the same key. With `persist`, the
/// first `computed` objects still come back as results: persisting dask collections needs their keys'
/// values, and computing them in the same run as the rest runs the tasks they share once.
///
/// With `each` (a callable), a failed task fails only what depends on it: every other task still
/// runs, and each of `objs` that needed a failed task is replaced by `each(exception)` instead.
///
/// The threads scheduler lets as many threads take tasks as measurably pays; with `ramp` (set for
/// dask collections' graphs) it measures as `belated.get` does, over windows of a few tasks, and
/// otherwise only where tasks are short ([`DELAYED_WINDOW_TASKS`]).
///
/// A task whose worker process dies runs again `retries` more times; one that raised runs again
/// `retry_errors` more times (a Client's `retries=`, as in distributed).
#[pyfunction]
#[pyo3(signature = (
    objs, scheduler="threads", num_workers=None, traverse=true, callbacks=None, timeout=None, persist=false,
    retries=1, cluster=None, cancel=None, each=None, computed=0, keep=false, ramp=false,
    retry_errors=0, stand_ins=None
))]
#[allow(clippy::too_many_arguments)] // compute's keyword arguments, as Python passes them
pub(crate) fn compute<'py>(
    py: Python<'py>,
    objs: &Bound<'py, PyTuple>,
    scheduler: &str,
    num_workers: Option<i64>,
    traverse: bool,
    callbacks: Option<&Bound<'py, PyTuple>>,
    timeout: Option<f64>,
    persist: bool,
    retries: usize,
    cluster: Option<Py<Cluster>>,
    cancel: Option<Py<CancelToken>>,
    each: Option<&Bound<'py, PyAny>>,
    computed: usize,
    keep: bool,
    ramp: bool,
    retry_errors: u32,
    stand_ins: Option<&Bound<'py, PyTuple>>,
) -> PyResult<Bound<'py, PyAny>> {
    catch_panics(|| {
        let node =
            |obj: Bound<'py, PyAny>| PyResult::Ok(Arc::clone(obj.cast::<Delayed>()?.get().node()));
        let stand_ins = stand_ins
            .map(|given| {
                given
                    .iter()
                    .map(|pair| {
                        let (stand_in, original): (Bound<'py, PyAny>, Bound<'py, PyAny>) =
                            pair.extract()?;
                        let original = (!original.is_none()).then(|| node(original)).transpose()?;
                        Ok((node(stand_in)?, original))
                    })
                    .collect::<PyResult<Vec<_>>>()
            })
            .transpose()?
            .unwrap_or_default();
        if persist && each.is_some() {
            return Err(PyValueError::new_err(
                "persist and each cannot be combined: a persisted object holds a value",
            ));
        }
        let run = Run {
            mode: mode(py, scheduler, num_workers, cluster)?,
            cancel: cancel.as_ref().map(Py::get),
            callbacks: &callbacks.cloned().unwrap_or_else(|| PyTuple::empty(py)),
            deadline: timeout.map(Deadline::after).transpose()?.flatten(),
            retries,
            retry_errors,
            keep_going: each.is_some(),
            keep,
            ramp,
        };
        let mut collector = Collector::new(traverse);
        let template = collector.args(objs)?;
        let roots = collector.deps;
        let results = (|| {
            let values = if roots.is_empty() {
                Vec::new()
            } else {
                match execute(py, (&stand_ins, &roots), run)? {
                    Ran::All(values) => values,
                    Ran::Each(values) => match each {
                        Some(each) => return each_result(py, &template, values, each),
                        None => values.into_iter().collect::<PyResult<Vec<_>>>()?,
                    },
                }
            };
            if !persist {
                let results = Arg::Tuple(template).build(py, &values);
                release(py, values)?;
                return results;
            }
            // A top-level Delayed keeps its length (nout) when persisted; nested ones have none to keep.
            let mut lengths = vec![None; roots.len()];
            for (obj, arg) in objs.iter().zip(template.iter()) {
                if let (Ok(delayed), Arg::Dep(dep)) = (obj.cast::<Delayed>(), arg) {
                    lengths[*dep as usize] = delayed.get().length();
                }
            }
            let persisted = roots
                .iter()
                .zip(&values)
                .zip(lengths)
                .map(|((root, value), length)| {
                    let task = PyTask::new(
                        py,
                        root.payload().key_for_copy(py),
                        Op::Value(Arg::Value(value.0.clone_ref(py))),
                        &[],
                    );
                    let node = TaskNode::new(task, Vec::new());
                    Ok(PyValue(
                        Delayed::new(node, length, Role::Value)
                            .into_python(py)?
                            .into_any()
                            .unbind(),
                    ))
                })
                .collect::<PyResult<Vec<_>>>()?;
            let results = template
                .iter()
                .enumerate()
                .map(|(i, arg)| arg.build(py, if i < computed { &values } else { &persisted }))
                .collect::<PyResult<Vec<_>>>()?;
            release(py, values)?;
            Ok(PyTuple::new(py, results)?.into_any())
        })();
        // The roots are handles on the arguments' nodes, a million for `compute(*calls)`: let go of
        // one by one, with other threads running meanwhile (the arguments hold the nodes themselves).
        let released = release(py, roots);
        let results = results?;
        released.map(|()| results)
    })
}

/// `objs`' results, each built from its values, or `each(exception)` of the first failure it needed.
fn each_result<'py>(
    py: Python<'py>,
    template: &[Arg],
    values: Vec<PyResult<PyValue>>,
    each: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut failures = Vec::new();
    let values: Vec<PyValue> = values
        .into_iter()
        .enumerate()
        .map(|(i, value)| {
            value.unwrap_or_else(|failure| {
                failures.push((i as u32, failure));
                PyValue(py.None())
            })
        })
        .collect();
    let items = template
        .iter()
        .map(|arg| {
            let mut first_failed = None;
            arg.visit_deps(&mut |dep| {
                first_failed = first_failed.or_else(|| failures.iter().find(|(i, _)| *i == dep))
            });
            match first_failed {
                // As a value, with its traceback: the user's frames go with it.
                Some((_, failure)) => each.call1((failure.clone_ref(py).into_value(py),)),
                None => arg.build(py, &values),
            }
        })
        .collect::<PyResult<Vec<_>>>()?;
    let result = PyTuple::new(py, items)?;
    release(py, values)?;
    Ok(result.into_any())
}

/// Stops every worker pool; registered with `atexit` so no worker is attached while Python finalizes.
#[pyfunction]
pub(crate) fn shutdown() {
    for pool in POOLS.take_all() {
        pool.shutdown();
    }
    close_processes_clusters();
}

/// After `fork()` the child has none of the parent's threads: forget the pools (their threads cannot be
/// joined there) so the next compute starts new ones. A task that forked on a worker thread ends the
/// child when it comes back there ([`call_task`]).
#[pyfunction]
pub(crate) fn forget_pools_after_fork() {
    note_fork_in_child();
    std::mem::forget(POOLS.take_all());
    forget_processes_clusters();
}

/// Computes through another engine: `executor(graph, keys, dependencies, dashboard)` receives the whole
/// graph at once in dask's legacy spec (key → task, in a topological order), the keys wanted, each key's
/// dependencies and a `DashboardReport` to tell of finished tasks, and returns the results of `keys`
/// in order.
#[pyfunction]
#[pyo3(signature = (objs, executor, traverse=true))]
pub(crate) fn compute_with<'py>(
    py: Python<'py>,
    objs: &Bound<'py, PyTuple>,
    executor: &Bound<'py, PyAny>,
    traverse: bool,
) -> PyResult<Bound<'py, PyAny>> {
    catch_panics(|| {
        let mut collector = Collector::new(traverse);
        let template = collector.args(objs)?;
        if collector.deps.is_empty() {
            return Arg::Tuple(template).build(py, &[]);
        }
        let plan =
            Plan::flatten(&collector.deps).map_err(|e| to_python(py, e, |_| String::new()))?;
        let graph = LegacyGraph::new(py, &plan)?;
        let wanted: Vec<Bound<'py, PyAny>> = plan
            .outputs
            .iter()
            .map(|t| graph.keys[t.index()].clone())
            .collect();
        let dashboard = Py::new(py, DashboardReport::begin(py, &plan.nodes, &plan.graph)?)?;
        let results = executor.call1((&graph.tasks, wanted, &graph.dependencies, dashboard))?;
        let values = results
            .try_iter()?
            .map(|value| Ok(PyValue(value?.unbind())))
            .collect::<PyResult<Vec<_>>>()?;
        if values.len() != plan.outputs.len() {
            return Err(PyValueError::new_err(format!(
                "the executor returned {} results for {} keys",
                values.len(),
                plan.outputs.len()
            )));
        }
        Arg::Tuple(template).build(py, &values)
    })
}
