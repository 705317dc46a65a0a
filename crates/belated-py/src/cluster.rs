//! A local cluster: worker processes managed by the engine, each running several tasks at once on its
//! own threads and keeping the results it computed.
//!
//! The runtime is `belated_cluster`'s: its processes ([`Workers`]), and its runner
//! ([`belated_cluster::ClusterRunner`]), which holds the policy (placement, transfers, upload-once,
//! retries, releases, cancel; lost results are recomputed by the engine's schedule). Here is only what is Python's: how a worker is
//! started ([`worker_spec`]), the codec of Python values ([`PyCodec`]: cloudpickle, with the task
//! guard around each task), the `Cluster` class, and the `processes` scheduler's clusters.

use std::sync::Arc;
use std::time::Duration;

use belated_cluster::directory::Held;
use belated_cluster::runner::{Encoded, Input};
use belated_cluster::wire::Frame;
use belated_cluster::{Codec, Error, MemoryLimit, Requests, Spec, Workers};
use belated_core::{Graph, TaskId, ThreadPool, KEPT_POOLS};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use rustc_hash::FxHashMap;

use crate::codec::{decode_reply, frames_from, frames_of, helper, int_reply, python_frames};
use crate::errors::{
    cluster_error, BelatedError, CancelledError, WorkerLostError, WorkerStartError,
};
use crate::host::{PythonHost, TaskGuard, MAX_THREADS};
use crate::plain_call::PlainCalls;
use crate::task::{Arg, Op, PyValue, TaskNode, Work};

/// How long a new worker may take to import its modules and say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// What a worker runs first: it takes the parent's `sys.path` in place of its own, before importing
/// anything, as multiprocessing's spawn does. `python -m` would put the current directory first on the
/// path (and `-P`, which stops that, is Python 3.11+), so a module planted there would run in every
/// worker. It loads `belated._worker` alone, not the `belated` package, whose imports would take most
/// of a worker's start (a task that needs the package imports it then).
const WORKER_BOOTSTRAP: &str = "import os, sys; \
    sys.path[:] = os.environ.pop('BELATED_WORKER_PATH').split(os.pathsep); \
    from importlib.machinery import PathFinder; from importlib.util import module_from_spec; \
    package = PathFinder.find_spec('belated', sys.path); \
    spec = PathFinder.find_spec('belated._worker', package.submodule_search_locations); \
    worker = sys.modules['belated._worker'] = module_from_spec(spec); \
    spec.loader.exec_module(worker); worker.main()";

/// How to start a worker of this interpreter with `connections` connections, importing `preload`
/// once ready. It gets the parent's `sys.path`, so it imports what the parent imports (functions
/// pickled by reference included). Its last argument tells it whether a Client answers its tasks'
/// requests (`answer`, called with a request's frames, returning the reply's), so that `get_client()`
/// in a task without one fails there, saying why.
fn worker_spec(
    py: Python<'_>,
    connections: usize,
    preload: Vec<String>,
    answer: Option<Py<PyAny>>,
) -> PyResult<Spec> {
    let sys = py.import("sys")?;
    let separator: String = py.import("os")?.getattr("pathsep")?.extract()?;
    let path: Vec<String> = sys.getattr("path")?.extract()?;
    let args = ["-c", WORKER_BOOTSTRAP].map(String::from);
    let client = if answer.is_some() { "client" } else { "none" };
    Ok(Spec {
        program: sys.getattr("executable")?.extract()?,
        args: [
            &args[..],
            &[
                connections.to_string(),
                preload.join(","),
                client.to_string(),
            ],
        ]
        .concat(),
        env: vec![("BELATED_WORKER_PATH".to_string(), path.join(&separator))],
        connections,
        start_timeout: START_TIMEOUT,
        requests: answer.map(answering),
    })
}

/// Answers a worker's requests with the Python callable `answer`, which encodes its own failures; if
/// it cannot even do that, the worker gets an empty answer and raises.
fn answering(answer: Py<PyAny>) -> Requests {
    Requests(Arc::new(move |frames| {
        Python::attach(|py| {
            python_frames(py, &frames)
                .and_then(|frames| answer.call1(py, (frames,)))
                .and_then(|reply| frames_from(py, reply.bind(py)))
                .unwrap_or_else(|error| {
                    error.print(py);
                    Vec::new()
                })
        })
    }))
}

pub(crate) struct ClusterShared {
    /// The process that started the workers. A child forked from it has none of the pool's threads and
    /// must not stop the parent's workers: there the cluster is refused and let go of untouched.
    owner: u32,
    runtime: Arc<belated_cluster::Cluster<Workers>>,
}

impl ClusterShared {
    pub(crate) fn workers(&self) -> usize {
        self.runtime.workers()
    }

    pub(crate) fn threads_per_worker(&self) -> usize {
        self.runtime.threads_per_worker()
    }

    fn processes(&self) -> &Arc<Workers> {
        self.runtime.transport()
    }

    fn closed(&self) -> bool {
        self.processes().is_closed()
    }

    pub(crate) fn flush_releases(&self) {
        self.runtime.flush_releases();
    }

    fn forked(&self) -> bool {
        std::process::id() != self.owner
    }

    fn close(&self) {
        // Dropping a worker kills it: only its owner may.
        self.processes().close(self.forked());
    }
}

/// The runner of one computation on a cluster.
pub(crate) type ClusterRunner = belated_cluster::ClusterRunner<PyCodec, Workers>;

/// A runner of `graph` on `cluster`, each task passing `guard`: its `outputs` come back, or with
/// `keep` stay in their workers (a persist); a task that raised runs again `retry_errors` times. The tasks in `kept` ([`kept_here`]) use the result an
/// earlier persist left in this cluster's workers where it is.
pub(crate) fn cluster_runner(
    cluster: &Arc<ClusterShared>,
    nodes: &Arc<[Arc<TaskNode>]>,
    (graph, outputs): (&Graph, &[TaskId]),
    (guard, kept): (TaskGuard, FxHashMap<u32, Held<PyValue>>),
    (retries, retry_errors, keep): (usize, u32, bool),
) -> ClusterRunner {
    let codec = PyCodec {
        nodes: Arc::clone(nodes),
        guard,
        kept,
        cluster: Arc::clone(cluster),
        plain: PlainCalls::default(),
    };
    let runner = ClusterRunner::new(&cluster.runtime, codec, graph, outputs, retries)
        .retrying_errors(retry_errors);
    if keep {
        runner.keeping(outputs)
    } else {
        runner
    }
}

/// The tasks of `nodes` that stand for a result kept in `cluster`'s workers: a persisted `Delayed`'s
/// task (a call of `belated._futures.Persisted` without arguments) whose persist is done there.
pub(crate) fn kept_here(
    py: Python<'_>,
    cluster: &Arc<ClusterShared>,
    nodes: &[Arc<TaskNode>],
) -> PyResult<FxHashMap<u32, Held<PyValue>>> {
    static PERSISTED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let mut kept = FxHashMap::default();
    let mut persisted = None;
    for (index, node) in nodes.iter().enumerate() {
        let Op::Call {
            func: Arg::Value(func),
            args,
            ..
        } = &node.payload().op
        else {
            continue;
        };
        if !args.is_empty() {
            continue;
        }
        let persisted = match &persisted {
            Some(class) => class,
            None => persisted.insert(
                PERSISTED
                    .import(py, "belated._futures", "Persisted")?
                    .clone(),
            ),
        };
        let func = func.bind(py);
        if !func.is_instance(persisted)? {
            continue;
        }
        let result = func.call_method0("kept")?;
        if let Ok(result) = result.cast::<Kept>() {
            let result = result.get();
            // One held here travels in the call as any literal does (its clone needs the
            // interpreter, which the runner's threads may not hold).
            if Arc::ptr_eq(&result.shared, cluster) && result.held.local.is_none() {
                kept.insert(index as u32, result.held.clone());
            }
        }
    }
    Ok(kept)
}

/// A result a persist or scatter left in a worker of a local cluster (or, for a literal, here).
/// Dropping the last reference releases it in its workers at once.
#[pyclass(module = "belated._belated", frozen)]
pub(crate) struct Kept {
    held: Held<PyValue>,
    shared: Arc<ClusterShared>,
}

impl Kept {
    pub(crate) fn new(held: Held<PyValue>, shared: &Arc<ClusterShared>) -> Self {
        Kept {
            held,
            shared: Arc::clone(shared),
        }
    }
}

#[pymethods]
impl Kept {
    /// The value, fetched from a worker keeping it (it stays there too). `WorkerLostError` if
    /// every worker that kept it was lost.
    fn fetch<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(local) = &self.held.local {
            return Ok(local.0.bind(py).clone());
        }
        let runtime = &self.shared.runtime;
        let reply = py.detach(|| runtime.fetch_kept(&self.held)).map_err(|_| {
            WorkerLostError::new_err(
                "the worker keeping this persisted result was lost; compute it again from its task",
            )
        })?;
        decode_reply(py, &reply)?.get_item(0)
    }

    /// Whether every worker that kept it was lost.
    #[getter]
    fn lost(&self) -> bool {
        self.held.is_lost(self.shared.processes().directory())
    }

    /// The worker keeping it (`None` for a value held here).
    #[getter]
    fn worker(&self) -> Option<usize> {
        self.held.remote.as_ref().map(|kept| kept.worker)
    }

    /// The workers holding a copy of it, the one that made it first (`who_has`).
    #[getter]
    fn workers(&self) -> Vec<usize> {
        self.held.holders(self.shared.processes().directory())
    }
}

/// Python values as worker processes receive them (cloudpickle frames, `belated._worker`'s
/// helpers), and the task guard (Ctrl-C, deadline, per-task callbacks) around each task the runner
/// runs, recomputed ones included.
pub(crate) struct PyCodec {
    nodes: Arc<[Arc<TaskNode>]>,
    guard: TaskGuard,
    /// Results earlier persists left in the workers, by task.
    kept: FxHashMap<u32, Held<PyValue>>,
    /// The cluster of those results, and of the ones that replace them once lost.
    cluster: Arc<ClusterShared>,
    /// The calls of plain arguments, pickled without the interpreter.
    plain: PlainCalls,
}

impl PyCodec {
    fn key(&self, py: Python<'_>, task: TaskId) -> String {
        self.nodes[task.index()].payload().key_string(py)
    }

    fn stored(py: Python<'_>, id: u64) -> PyResult<PyValue> {
        static STORED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        Ok(PyValue(
            helper(py, &STORED, "Stored")?.call1((id,))?.unbind(),
        ))
    }

    fn stored_many<'py>(
        py: Python<'py>,
        ids: &[u64],
        as_tuple: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        static STORED_MANY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let ids: Vec<u8> = ids.iter().flat_map(|id| id.to_ne_bytes()).collect();
        helper(py, &STORED_MANY, "StoredMany")?.call1((PyBytes::new(py, &ids), as_tuple))
    }
}

impl Codec for PyCodec {
    type Value = PyValue;
    type Error = PyErr;

    fn encode_call(
        &self,
        task: TaskId,
        inputs: &[Input<'_, PyValue>],
    ) -> PyResult<Encoded<PyValue>> {
        Python::attach(|py| {
            let payload = self.nodes[task.index()].payload();
            let input = |at: usize| match &inputs[at] {
                Input::Here(value) => Ok(PyValue(value.0.clone_ref(py))),
                Input::Stored(id) => Self::stored(py, *id),
            };
            let stored: Vec<Option<u64>> = inputs
                .iter()
                .map(|input| match input {
                    Input::Stored(id) => Some(*id),
                    Input::Here(_) => None,
                })
                .collect();
            let call = if stored.iter().any(Option::is_some) {
                payload.prepare_in_worker(py, &stored, input, |ids, as_tuple| {
                    Self::stored_many(py, ids, as_tuple)
                })?
            } else {
                let inputs = (0..inputs.len()).map(input).collect::<PyResult<Vec<_>>>()?;
                match payload.prepare(py, &inputs)? {
                    Work::Ready(value) => return Ok(Encoded::Ready(PyValue(value.unbind()))),
                    Work::Call(call) => call,
                }
            };
            if let Some(frames) = self.plain.frames(&call) {
                return Ok(Encoded::Call(frames));
            }
            let frames = frames_of(py, &call).map_err(|error| {
                BelatedError::new_err(format!(
                    "task {} cannot be sent to a worker process: {error}; make its function and \
                     arguments picklable, or use scheduler='threads'",
                    payload.key_string(py)
                ))
            })?;
            self.plain.learn(py, &call, &frames)?;
            Ok(Encoded::Call(frames))
        })
    }

    fn encode_value(&self, task: TaskId, value: &PyValue) -> PyResult<Vec<Frame>> {
        static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        Python::attach(|py| {
            // Framed as a worker's reply to a fetch, which is how a call's worker receives stored
            // values; its large buffers in shared memory, which every worker it goes to maps.
            let reply = (true, PyList::new(py, [value.0.bind(py)])?);
            let frames = helper(py, &DUMPS, "dumps")?
                .call1((reply, true))
                .map_err(|error| {
                    BelatedError::new_err(format!(
                        "an input of task {} cannot be sent to a worker process: {error}; make it \
                         picklable, or use scheduler='threads'",
                        self.key(py, task)
                    ))
                })?;
            frames_from(py, &frames)
        })
    }

    fn size(&self, value: &PyValue) -> PyResult<u64> {
        static NBYTES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        Python::attach(|py| {
            helper(py, &NBYTES, "nbytes")?
                .call1((value.0.bind(py),))?
                .extract()
        })
    }

    fn decode_value(&self, reply: &[Frame]) -> PyResult<PyValue> {
        Python::attach(|py| Ok(PyValue(decode_reply(py, reply)?.unbind())))
    }

    fn decode_fetched(&self, reply: &[Frame]) -> PyResult<PyValue> {
        Python::attach(|py| Ok(PyValue(decode_reply(py, reply)?.get_item(0)?.unbind())))
    }

    fn decode_size(&self, reply: &[Frame]) -> PyResult<u64> {
        if let Some(size) = int_reply(reply).and_then(|size| u64::try_from(size).ok()) {
            return Ok(size);
        }
        Python::attach(|py| decode_reply(py, reply)?.extract())
    }

    fn failed(&self, task: TaskId, error: Error) -> PyErr {
        Python::attach(|py| {
            let key = self.key(py, task);
            match error {
                Error::TaskLost { .. } => WorkerLostError::new_err(format!("task {key} {error}")),
                Error::Cancelled => CancelledError::new_err(error.to_string()),
                error => cluster_error(error, &format!("task {key} could not run")),
            }
        })
    }

    fn blocking<T: Send>(&self, wait: impl FnOnce() -> T + Send) -> T {
        Python::attach(|py| py.detach(wait))
    }

    fn kept(&self, task: TaskId) -> Option<Held<PyValue>> {
        self.kept.get(&task.0).cloned()
    }

    fn before(&self, task: TaskId) -> PyResult<()> {
        Python::attach(|py| self.guard.before(py, &self.nodes[task.index()]).map(drop))
    }

    fn after(&self, task: TaskId, value: Option<&PyValue>) -> PyResult<()> {
        if self.guard.hooks.is_none() {
            return Ok(());
        }
        Python::attach(|py| {
            let value = match value {
                Some(value) => value.0.bind(py).clone(),
                None => py.None().into_bound(py),
            };
            let key = self.nodes[task.index()].payload().key_object(py);
            self.guard.after(py, &key, &value)
        })
    }

    fn ran(&self, task: TaskId, held: &Held<PyValue>) -> PyResult<()> {
        if !self.kept.contains_key(&task.0) {
            return Ok(());
        }
        // A persisted result lost with its worker, computed again: its `Persisted` keeps this one.
        let Op::Call {
            func: Arg::Value(persisted),
            ..
        } = &self.nodes[task.index()].payload().op
        else {
            return Ok(());
        };
        Python::attach(|py| {
            let kept = Bound::new(py, Kept::new(held.clone(), &self.cluster))?;
            persisted.bind(py).call_method1("kept_again", (kept,))?;
            Ok(())
        })
    }
}

/// Whether the calling thread is one of the engine's pool threads, i.e. running a task here (the
/// Client runs work submitted from a task off the pool, which that task may be waiting on).
#[pyfunction]
pub(crate) fn on_pool_thread() -> bool {
    belated_core::on_worker_thread()
}

/// A local cluster's processes and threads (`belated.Client()` without an address).
#[pyclass(module = "belated._belated", frozen)]
pub(crate) struct Cluster {
    pub(crate) shared: Arc<ClusterShared>,
    /// The threads that drive the workers: a placement group per live worker (but those a scale
    /// down is retiring), grown and shrunk with them.
    pool: Mutex<Option<Arc<ThreadPool>>>,
}

impl Cluster {
    pub(crate) fn pool(&self) -> PyResult<Arc<ThreadPool>> {
        if self.shared.forked() {
            return Err(BelatedError::new_err(format!(
                "this Client's cluster belongs to process {}, which this one was forked from; start a \
                 new Client here",
                self.shared.owner
            )));
        }
        self.pool
            .lock()
            .clone()
            .ok_or_else(|| BelatedError::new_err("this cluster is closed; start a new Client"))
    }

    /// Stops the workers, then the pool's threads; in a forked child, lets go of both untouched (the
    /// threads do not exist there and the workers are the parent's).
    fn shut(&self) {
        self.shared.close();
        let Some(pool) = self.pool.lock().take() else {
            return;
        };
        if self.shared.forked() {
            std::mem::forget(pool);
        } else {
            // The pool's threads need the interpreter to leave their loop.
            Python::attach(|py| py.detach(|| pool.shutdown()));
        }
    }
}

impl Cluster {
    /// Starts `n_workers` worker processes that run `threads_per_worker` tasks each at once, and
    /// the pool threads that drive them.
    fn start(
        py: Python<'_>,
        n_workers: usize,
        threads_per_worker: usize,
        memory_limit: Option<MemoryLimit>,
        preload: Vec<String>,
        answer: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        // One connection per pool thread of its group, and one for fetches.
        let spec = worker_spec(py, threads_per_worker + 1, preload, answer)?;
        let workers = py
            .detach(|| {
                Workers::start(
                    spec,
                    n_workers,
                    MAX_THREADS / threads_per_worker,
                    memory_limit,
                )
            })
            .map_err(|error| cluster_error(error, "could not start the cluster"))?;
        let runtime = Arc::new(belated_cluster::Cluster::new(workers, threads_per_worker));
        let shared = Arc::new(ClusterShared {
            owner: std::process::id(),
            runtime: Arc::clone(&runtime),
        });
        runtime.release_promptly().map_err(|e| {
            shared.close();
            WorkerStartError::new_err(format!("could not start the cluster's release thread: {e}"))
        })?;
        let pool = ThreadPool::with_groups(n_workers, threads_per_worker, Arc::new(PythonHost))
            .map_err(|e| {
                shared.close();
                WorkerStartError::new_err(format!("could not start the cluster's threads: {e}"))
            })?;
        Ok(Cluster {
            shared,
            pool: Mutex::new(Some(Arc::new(pool))),
        })
    }

    /// Runs computations on the first `workers` workers from now on: the pool's threads for the
    /// others start, or finish their task and end.
    fn regroup(&self, workers: usize) -> PyResult<()> {
        let pool = self.pool()?;
        if workers < pool.groups() {
            pool.shrink(workers);
            return Ok(());
        }
        pool.grow(workers).map_err(|e| {
            WorkerStartError::new_err(format!("could not start the cluster's threads: {e}"))
        })
    }
}

/// The `processes` scheduler's clusters, one per worker count, of one-thread workers: started on
/// first use and kept while among the [`KEPT_POOLS`] most recently used, like the threads pools. One
/// let go of ends when the last computation using it does. Most recently used last.
static PROCESS_CLUSTERS: Mutex<Vec<(usize, Arc<Cluster>)>> = Mutex::new(Vec::new());

/// The cluster of `workers` one-thread workers that `scheduler="processes"` runs on.
pub(crate) fn processes_cluster(py: Python<'_>, workers: usize) -> PyResult<Arc<Cluster>> {
    let running = |clusters: &mut Vec<(usize, Arc<Cluster>)>| {
        let at = clusters
            .iter()
            .position(|(n, cluster)| *n == workers && !cluster.shared.closed())?;
        let entry = clusters.remove(at);
        let cluster = Arc::clone(&entry.1);
        clusters.push(entry);
        Some(cluster)
    };
    if let Some(cluster) = running(&mut PROCESS_CLUSTERS.lock()) {
        return Ok(cluster);
    }
    // Its workers preload what a Client's would: a first task on numpy arrays would otherwise wait
    // for each worker's numpy import.
    static USUAL_IMPORTS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let preload = helper(py, &USUAL_IMPORTS, "usual_imports")?
        .call0()?
        .extract()?;
    // Started without the registry's lock, which a thread holding the interpreter may wait for.
    let started = Arc::new(Cluster::start(py, workers, 1, None, preload, None)?);
    let let_go = {
        let mut clusters = PROCESS_CLUSTERS.lock();
        if let Some(cluster) = running(&mut clusters) {
            return Ok(cluster); // another thread was first; ours is closed as it drops
        }
        clusters.push((workers, Arc::clone(&started)));
        let over = clusters.len().saturating_sub(KEPT_POOLS);
        clusters.drain(..over).collect::<Vec<_>>()
    };
    // Dropped outside the lock: the last reference to a cluster stops its workers.
    py.detach(|| drop(let_go));
    Ok(started)
}

/// Stops the processes scheduler's clusters (at exit).
pub(crate) fn close_processes_clusters() {
    let clusters = std::mem::take(&mut *PROCESS_CLUSTERS.lock());
    for (_, cluster) in clusters {
        cluster.shut();
    }
}

/// After `fork()`: the clusters' threads and workers are the parent's; forget them untouched.
pub(crate) fn forget_processes_clusters() {
    std::mem::forget(std::mem::take(&mut *PROCESS_CLUSTERS.lock()));
}

#[pymethods]
impl Cluster {
    #[new]
    #[pyo3(signature = (
        n_workers, threads_per_worker, memory_limit=None, preload=Vec::new(), memory_limit_text=None,
        answer=None
    ))]
    fn new(
        py: Python<'_>,
        n_workers: usize,
        threads_per_worker: usize,
        memory_limit: Option<u64>,
        preload: Vec<String>,
        memory_limit_text: Option<String>,
        answer: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        if n_workers == 0 || threads_per_worker == 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "n_workers and threads_per_worker must be at least 1",
            ));
        }
        if n_workers.saturating_mul(threads_per_worker) > MAX_THREADS {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "n_workers * threads_per_worker must be at most {MAX_THREADS}, got {n_workers} * {threads_per_worker}"
            )));
        }
        let memory_limit = memory_limit.map(|bytes| MemoryLimit::new(bytes, memory_limit_text));
        Self::start(
            py,
            n_workers,
            threads_per_worker,
            memory_limit,
            preload,
            answer,
        )
    }

    /// Stops the workers (killing tasks still running) and the threads that drive them. Idempotent.
    fn close(&self) {
        self.shut();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.shared.closed()
    }

    #[getter]
    fn n_workers(&self) -> usize {
        self.shared.workers()
    }

    #[getter]
    fn threads_per_worker(&self) -> usize {
        self.shared.threads_per_worker()
    }

    /// Starts workers up to `n_workers` beside the running ones and sends new computations to all
    /// of them; computations already running go on where they run.
    fn scale_up(&self, py: Python<'_>, n_workers: usize) -> PyResult<()> {
        self.pool()?;
        let threads = self.shared.threads_per_worker();
        if n_workers.saturating_mul(threads) > MAX_THREADS {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "n_workers * threads_per_worker must be at most {MAX_THREADS}, got {n_workers} * {threads}"
            )));
        }
        let more = n_workers.saturating_sub(self.shared.workers());
        let processes = self.shared.processes();
        py.detach(|| processes.add(more))
            .map_err(|error| cluster_error(error, "could not add workers"))?;
        self.regroup(n_workers)
    }

    /// Runs tasks on the first `staying` workers only from now on: the first step of a scale down
    /// ([`Cluster::drain`], then [`Cluster::retire`]). The others finish the task they run.
    fn shrink(&self, staying: usize) -> PyResult<()> {
        self.regroup(staying.clamp(1, self.shared.workers()))
    }

    /// Waits until the workers of the last shrink run nothing: their threads ended, and the
    /// computations that ran when it came (whose results may be anywhere) have too.
    fn drain(&self) -> PyResult<()> {
        self.pool()?.wait_shrunk();
        Ok(())
    }

    /// Moves the values of `kept` that only workers `staying..` hold to the others (from worker to
    /// worker), then retires those workers; `(moved, lost)`. Call it once [`Cluster::drain`]ed:
    /// no task runs there then.
    fn retire(
        &self,
        py: Python<'_>,
        staying: usize,
        kept: Vec<PyRef<'_, Kept>>,
    ) -> PyResult<(usize, usize)> {
        self.pool()?;
        let staying = staying.clamp(1, self.shared.workers());
        let originals = self.originals(&kept);
        let store = store_call(py)?;
        let runtime = &self.shared.runtime;
        let moved = py.detach(|| {
            let moved = runtime.move_off(staying, &originals, &store, stored);
            runtime.transport().retire(staying);
            moved
        });
        Ok((moved.moved, moved.lost))
    }

    /// Copies the values of `kept` to every worker that holds none, from worker to worker
    /// (`scatter(broadcast=True)`); how many copies were made.
    fn replicate(&self, py: Python<'_>, kept: Vec<PyRef<'_, Kept>>) -> PyResult<usize> {
        self.pool()?;
        let originals = self.originals(&kept);
        let store = store_call(py)?;
        let runtime = &self.shared.runtime;
        Ok(py
            .detach(|| runtime.replicate(&originals, &store, stored))
            .moved)
    }

    #[getter]
    fn memory_limit(&self) -> Option<u64> {
        self.shared.processes().memory_limit()
    }

    /// The process ids of the running workers.
    #[getter]
    fn pids(&self) -> Vec<u32> {
        self.shared.processes().pids()
    }

    /// Per worker, by index, its process id while it runs (`None` for one that died and is not
    /// replaced yet).
    #[getter]
    fn pids_by_worker(&self) -> Vec<Option<u32>> {
        self.shared.processes().pids_by_worker()
    }

    /// Calls `function(*args, **kwargs)` once in every worker, on its fetch connection (so it runs
    /// beside whatever tasks the worker is running), and returns each worker's result. The first
    /// worker whose call raised raises its exception; a worker that died gives `WorkerLostError`.
    fn run_on_workers<'py>(
        &self,
        py: Python<'py>,
        function: &Bound<'py, PyAny>,
        args: &Bound<'py, PyAny>,
        kwargs: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        static DUMPS_CALL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        self.pool()?; // refuses a closed or forked-from cluster
        let call = helper(py, &DUMPS_CALL, "dumps_call")?.call1((function, args, kwargs))?;
        let call = frames_from(py, &call)?;
        let shared = &self.shared;
        let replies = py.detach(|| shared.runtime.run_everywhere(&call));
        replies
            .into_iter()
            .enumerate()
            .map(|(worker, reply)| {
                let reply = reply.map_err(|_| {
                    WorkerLostError::new_err(format!("worker {worker} died during run()"))
                })?;
                decode_reply(py, &reply)
            })
            .collect()
    }

    /// Counts of results moved between workers, large values built here sent to a worker to keep,
    /// tasks recomputed after a worker was lost, and workers replaced.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.shared.runtime.stats();
        let dict = PyDict::new(py);
        dict.set_item("transferred", stats.transferred())?;
        dict.set_item("uploaded", stats.uploaded())?;
        dict.set_item("recomputed", stats.recomputed())?;
        dict.set_item("replaced", self.shared.processes().replaced())?;
        Ok(dict)
    }
}

impl Cluster {
    /// The originals of the values of `kept` that this cluster's workers keep.
    fn originals(&self, kept: &[PyRef<'_, Kept>]) -> Vec<Arc<belated_cluster::directory::Kept>> {
        kept.iter()
            .filter(|kept| Arc::ptr_eq(&kept.shared, &self.shared))
            .filter_map(|kept| kept.held.remote.clone())
            .collect()
    }
}

/// The call a worker runs after storing values moved to it: one that does nothing.
fn store_call(py: Python<'_>) -> PyResult<Vec<Frame>> {
    static IDENTITY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static DUMPS_CALL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let call = helper(py, &DUMPS_CALL, "dumps_call")?.call1((
        helper(py, &IDENTITY, "identity")?,
        PyTuple::new(py, [py.None()])?,
        PyDict::new(py),
    ))?;
    frames_from(py, &call)
}

/// Whether a worker's reply to [`store_call`] says it stored what came with it.
fn stored(reply: &[Frame]) -> bool {
    Python::attach(|py| decode_reply(py, reply).is_ok())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shut();
    }
}
