//! `compute` and `persist`: flatten what the arguments need, run it, put the results back in place.
//!
//! Threads and processes: a pool per kind and worker count, started on first use and kept for the life
//! of the process (a processes pool's threads each drive one worker process). The calling thread lets
//! go of the interpreter while it waits, waking every [`SIGNAL_POLL`] to let Python
//! deliver Ctrl-C, which cancels the computation. A compute called from inside a task runs inline on that
//! worker, since waiting on the pool it occupies could wait forever.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use belated_core::{
    on_worker_thread, run_inline_observed, Fanout, Observer, Plan, Runner, TaskId, ThreadPool,
};
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple};

use crate::cluster::{Cluster, ClusterRunner};
use crate::dashboard::HubObserver;
use crate::delayed::{Delayed, Role};
use crate::diagnostics::{ComputeState, TaskGraph, Tracker};
use crate::errors::{to_python, CancelledError, WorkerStartError};
use crate::export::LegacyGraph;
use crate::host::{Deadline, PythonHost, TaskGuard, TaskHooks};
use crate::processes::{check_picklable, helper, run_remote, Launch};
use crate::task::{Arg, Collector, Key, Op, PyTask, PyValue, TaskNode, Work};

pub(crate) const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// A pool's kind (`true`: processes) and size.
type PoolKey = (bool, usize);

static POOLS: Mutex<Vec<(PoolKey, Arc<ThreadPool>)>> = Mutex::new(Vec::new());

struct PyRunner {
    nodes: Arc<[Arc<TaskNode>]>,
    guard: TaskGuard,
    /// Set for the processes scheduler: calls run in this thread's worker process.
    processes: Option<Launch>,
}

impl Runner for PyRunner {
    type Value = PyValue;
    type Error = PyErr;

    fn run(&self, task: TaskId, inputs: &[PyValue]) -> PyResult<PyValue> {
        Python::attach(|py| {
            let node = &self.nodes[task.index()];
            let key = self.guard.before(py, node)?;
            let payload = node.payload();
            let value = match &self.processes {
                None => payload.evaluate(py, inputs)?,
                Some(launch) => match payload.prepare(py, inputs)? {
                    Work::Ready(value) => value,
                    Work::Call(call) => run_remote(py, payload, call, launch)?,
                },
            };
            if let Some(key) = key {
                self.guard.after(py, &key, &value)?;
            }
            Ok(PyValue(value.unbind()))
        })
    }
}

/// The `belated.diagnostics` callbacks listening to one computation. Each callback object offers
/// `_callback`: `(start, start_state, pretask, posttask, finish)`, each a callable or None, as in dask.
struct Listeners {
    finish: Vec<Py<PyAny>>,
    tracker: Arc<Tracker>,
    hooks: Arc<TaskHooks>,
}

impl Listeners {
    fn start(
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
            let set: [Option<Bound<'_, PyAny>>; 5] = callback.getattr("_callback")?.extract()?;
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
                .filter_map(|set| set[i].clone().map(Bound::unbind))
                .collect::<Vec<_>>()
        };
        for start in pick(0) {
            start.call1(py, (&graph,))?;
        }
        for start_state in pick(1) {
            start_state.call1(py, (&graph, &state))?;
        }
        Ok(Listeners {
            finish: pick(4),
            tracker,
            hooks: Arc::new(TaskHooks {
                pretask: pick(2),
                posttask: pick(3),
                graph,
                state,
            }),
        })
    }

    fn finish(&self, py: Python<'_>, errored: bool) -> PyResult<()> {
        for finish in &self.finish {
            finish.call1(py, (&self.hooks.graph, &self.hooks.state, errored))?;
        }
        Ok(())
    }
}

enum Mode {
    Inline,
    Threads(usize),
    Processes(usize),
    /// A local cluster, and its pool (taken when the mode is chosen, so a closed cluster is refused
    /// before anything starts).
    Cluster(Py<Cluster>, Arc<ThreadPool>),
}

fn mode(
    scheduler: &str,
    num_workers: Option<usize>,
    cluster: Option<Py<Cluster>>,
) -> PyResult<Mode> {
    if let Some(cluster) = cluster {
        let pool = cluster.get().pool()?;
        return Ok(Mode::Cluster(cluster, pool));
    }
    let workers = || match num_workers {
        Some(0) => Err(PyValueError::new_err("num_workers must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(std::thread::available_parallelism().map_or(1, usize::from)),
    };
    match scheduler {
        "sync" | "synchronous" | "single-threaded" => Ok(Mode::Inline),
        "threads" | "threading" | "threaded" => Ok(Mode::Threads(workers()?)),
        "processes" | "multiprocessing" => Ok(Mode::Processes(workers()?)),
        other => Err(PyValueError::new_err(format!(
            "unknown scheduler '{other}'; expected 'threads', 'processes' or 'sync'"
        ))),
    }
}

/// The pool for `threads` workers of a kind (`processes` or not), started on first use. A processes
/// pool's threads each own a worker process, so the two kinds never share threads.
pub(crate) fn pool(processes: bool, threads: usize) -> PyResult<Arc<ThreadPool>> {
    let mut pools = POOLS.lock();
    if let Some((_, pool)) = pools.iter().find(|(key, _)| *key == (processes, threads)) {
        return Ok(Arc::clone(pool));
    }
    let pool = ThreadPool::new(threads, Arc::new(PythonHost)).map_err(|e| {
        WorkerStartError::new_err(format!(
            "could not start {threads} worker threads ({e}); lower num_workers or use scheduler='sync'"
        ))
    })?;
    let pool = Arc::new(pool);
    pools.push(((processes, threads), Arc::clone(&pool)));
    Ok(pool)
}

/// How to run one computation: the scheduler, and compute's options.
struct Run<'a, 'py> {
    mode: Mode,
    cancel: Option<&'a CancelToken>,
    callbacks: &'a Bound<'py, PyTuple>,
    timeout: Option<f64>,
    retries: usize,
}

/// Lets another thread cancel a computation (a future's `cancel()`), which then raises CancelledError.
#[pyclass(module = "belated._belated", frozen)]
#[derive(Default)]
pub(crate) struct CancelToken {
    cancelled: AtomicBool,
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

    #[getter]
    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

/// What watches a pooled computation from the calling thread.
struct Watch<'a> {
    cancel: Option<&'a CancelToken>,
    deadline: Option<Deadline>,
    dashboard: &'a Option<Arc<HubObserver>>,
    listeners: &'a Option<Listeners>,
}

/// Submits to `pool` and waits, letting Python deliver Ctrl-C (which cancels) and enforcing the deadline.
fn run_pooled<R: Runner<Error = PyErr>>(
    py: Python<'_>,
    pool: &ThreadPool,
    (graph, outputs): (belated_core::Graph, Vec<TaskId>),
    runner: R,
    observer: Option<Arc<dyn Observer>>,
    watch: Watch<'_>,
) -> PyResult<Result<Vec<R::Value>, belated_core::Error<PyErr>>> {
    let handle = pool.submit_observed(graph, outputs, runner, observer);
    loop {
        if py.detach(|| handle.wait_timeout(SIGNAL_POLL)) {
            return Ok(handle.result());
        }
        let stop = match py.check_signals() {
            Err(interrupt) => Some(interrupt),
            Ok(()) if watch.cancel.is_some_and(CancelToken::cancelled) => {
                Some(CancelledError::new_err("the computation was cancelled"))
            }
            Ok(()) => watch.deadline.filter(Deadline::passed).map(|d| d.error()),
        };
        if let Some(interrupt) = stop {
            handle.cancel();
            if let Some(dashboard) = watch.dashboard {
                dashboard.end(false);
            }
            if let Some(listeners) = watch.listeners {
                listeners.finish(py, true)?;
            }
            return Err(interrupt);
        }
    }
}

/// Runs the graph the roots need and returns their results in order.
fn execute(py: Python<'_>, roots: &[Arc<TaskNode>], run: Run<'_, '_>) -> PyResult<Vec<PyValue>> {
    let Run {
        mode,
        cancel,
        callbacks,
        timeout,
        retries,
    } = run;
    let deadline = timeout.map(|seconds| Deadline {
        at: Instant::now() + Duration::from_secs_f64(seconds.max(0.0)),
        seconds,
    });
    let Plan {
        graph,
        nodes,
        outputs,
    } = Plan::flatten(roots).map_err(|e| to_python(py, e, |_| String::new()))?;
    let nodes: Arc<[Arc<TaskNode>]> = nodes.into();
    let listeners = if callbacks.is_empty() {
        None
    } else {
        Some(Listeners::start(py, &nodes, callbacks)?)
    };
    // A compute called from inside a task runs inline on that worker.
    let mode = if on_worker_thread() {
        Mode::Inline
    } else {
        mode
    };
    let workers = match &mode {
        Mode::Inline => 0,
        Mode::Threads(threads) | Mode::Processes(threads) => *threads,
        Mode::Cluster(cluster, _) => {
            let shared = &cluster.get().shared;
            shared.workers() * shared.threads_per_worker()
        }
    };
    if matches!(mode, Mode::Processes(_) | Mode::Cluster(..)) {
        check_picklable(py, &nodes)?;
        static NEW_COMPUTATION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        helper(py, &NEW_COMPUTATION, "new_computation")?.call0()?;
    }
    let dashboard = HubObserver::begin(py, &nodes, &graph, workers);
    let mut observers: Vec<Arc<dyn Observer>> = Vec::new();
    if let Some(listeners) = &listeners {
        observers.push(Arc::clone(&listeners.tracker) as Arc<dyn Observer>);
    }
    if let Some(dashboard) = &dashboard {
        observers.push(Arc::clone(dashboard) as Arc<dyn Observer>);
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
            .as_ref()
            .filter(|l| !l.hooks.pretask.is_empty() || !l.hooks.posttask.is_empty())
            .map(|l| Arc::clone(&l.hooks)),
    };
    let watch = Watch {
        cancel,
        deadline,
        dashboard: &dashboard,
        listeners: &listeners,
    };
    let runner = |guard, processes| PyRunner {
        nodes: Arc::clone(&nodes),
        guard,
        processes,
    };
    let result = match mode {
        Mode::Inline => run_inline_observed(graph, outputs, runner(guard, None), observer),
        Mode::Threads(threads) => run_pooled(
            py,
            &*pool(false, threads)?,
            (graph, outputs),
            runner(guard, None),
            observer,
            watch,
        )?,
        Mode::Processes(threads) => {
            let launch = Launch::from_interpreter(py, retries)?;
            run_pooled(
                py,
                &*pool(true, threads)?,
                (graph, outputs),
                runner(guard, Some(launch)),
                observer,
                watch,
            )?
        }
        Mode::Cluster(cluster, pool) => {
            let cluster = cluster.get();
            let runner =
                ClusterRunner::new(&cluster.shared, &nodes, &graph, &outputs, guard, retries);
            let wanted = outputs.clone();
            let result = run_pooled(py, &pool, (graph, outputs), runner, observer, watch);
            py.detach(|| cluster.shared.flush_releases());
            result?.and_then(|values| {
                values
                    .into_iter()
                    .zip(wanted)
                    .map(|(held, task)| {
                        held.local.ok_or_else(|| belated_core::Error::Panic {
                            task,
                            message: "its result stayed in a worker instead of coming back".into(),
                        })
                    })
                    .collect()
            })
        }
    };
    if let Some(dashboard) = &dashboard {
        dashboard.end(result.is_ok());
    }
    if let Some(listeners) = &listeners {
        listeners.finish(py, result.is_err())?;
    }
    result.map_err(|e| to_python(py, e, |task| nodes[task.index()].payload().key_string(py)))
}

/// Computes the `Delayed` objects found in `objs` and returns `objs` with each replaced by its result,
/// or, with `persist`, by a `Delayed` that holds its result under the same key.
#[pyfunction]
#[pyo3(signature = (
    objs, scheduler="threads", num_workers=None, traverse=true, callbacks=None, timeout=None, persist=false,
    retries=1, cluster=None, cancel=None
))]
#[allow(clippy::too_many_arguments)] // compute's keyword arguments, as Python passes them
pub(crate) fn compute<'py>(
    py: Python<'py>,
    objs: &Bound<'py, PyTuple>,
    scheduler: &str,
    num_workers: Option<usize>,
    traverse: bool,
    callbacks: Option<&Bound<'py, PyTuple>>,
    timeout: Option<f64>,
    persist: bool,
    retries: usize,
    cluster: Option<Py<Cluster>>,
    cancel: Option<Py<CancelToken>>,
) -> PyResult<Bound<'py, PyAny>> {
    let run = Run {
        mode: mode(scheduler, num_workers, cluster)?,
        cancel: cancel.as_ref().map(Py::get),
        callbacks: &callbacks.cloned().unwrap_or_else(|| PyTuple::empty(py)),
        timeout,
        retries,
    };
    let mut collector = Collector::new(traverse);
    let template = collector.args(objs)?;
    let roots = collector.deps;
    let values = if roots.is_empty() {
        Vec::new()
    } else {
        execute(py, &roots, run)?
    };
    if !persist {
        return Arg::Tuple(template).build(py, &values);
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
        .zip(values)
        .zip(lengths)
        .map(|((root, value), length)| {
            let node = TaskNode::new(
                PyTask {
                    key: Key::Named(root.payload().key_string(py).into()),
                    op: Op::Value(Arg::Value(value.0)),
                },
                Vec::new(),
            );
            Ok(PyValue(
                Bound::new(py, Delayed::new(node, length, Role::Value))?
                    .into_any()
                    .unbind(),
            ))
        })
        .collect::<PyResult<Vec<_>>>()?;
    Arg::Tuple(template).build(py, &persisted)
}

/// Stops every worker pool; registered with `atexit` so no worker is attached while Python finalizes.
#[pyfunction]
pub(crate) fn shutdown() {
    let pools = std::mem::take(&mut *POOLS.lock());
    for (_, pool) in pools {
        pool.shutdown();
    }
}

/// After `fork()` the child has none of the parent's threads: forget the pools (their threads cannot be
/// joined there) so the next compute starts new ones.
#[pyfunction]
pub(crate) fn forget_pools_after_fork() {
    std::mem::forget(std::mem::take(&mut *POOLS.lock()));
}

/// Computes through another engine: `executor(graph, keys, dependencies)` receives the whole graph at
/// once in dask's legacy spec (key → task, in a topological order), the keys wanted, and each key's
/// dependencies, and returns the results of `keys` in order.
#[pyfunction]
#[pyo3(signature = (objs, executor, traverse=true))]
pub(crate) fn compute_with<'py>(
    py: Python<'py>,
    objs: &Bound<'py, PyTuple>,
    executor: &Bound<'py, PyAny>,
    traverse: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let mut collector = Collector::new(traverse);
    let template = collector.args(objs)?;
    if collector.deps.is_empty() {
        return Arg::Tuple(template).build(py, &[]);
    }
    let plan = Plan::flatten(&collector.deps).map_err(|e| to_python(py, e, |_| String::new()))?;
    let graph = LegacyGraph::new(py, &plan)?;
    let wanted: Vec<Bound<'py, PyString>> = plan
        .outputs
        .iter()
        .map(|t| graph.keys[t.index()].clone())
        .collect();
    let results = executor.call1((&graph.tasks, wanted, &graph.dependencies))?;
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
}
