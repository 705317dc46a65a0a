//! A local cluster: worker processes managed by the engine, each running several tasks at once on its
//! own threads and keeping the results it computed.
//!
//! Policy and invariants:
//! - A cluster of `n` workers of `t` threads is a [`ThreadPool`] of `n` placement groups of `t` threads;
//!   each pool thread drives one thread of its group's worker process over its own connection, and the
//!   worker serves `t` connections, one thread each, plus one for fetches: `t` is a hard limit on the
//!   tasks a worker runs at once.
//! - Results stay in the worker that computed them; only outputs come back to this process. A task is
//!   placed on the worker holding most of its inputs' bytes (each worker reports the size of what it
//!   keeps); an input held by another worker is fetched from it (through this process: workers never
//!   talk to each other) and the receiving worker keeps its copy for later tasks. A released result is
//!   forgotten by its workers with the next request they receive.
//! - Workers talk to this process on socket pairs only it holds: no port, no path anyone can squat or
//!   that outlives a killed parent. They are started, replaced and held to the memory limit by
//!   `belated_cluster::Workers`, and die with the cluster.
//! - A worker that dies (killed, crashed, over its memory limit) is replaced. Tasks it was running are
//!   retried up to `retries` times; results it held are recomputed from their lineage
//!   (`belated_core::lineage`) by the task that needs them, on that task's worker.
//! - A cancelled computation kills the workers running its tasks, which are replaced.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;

use belated_cluster::directory::{self, Directory, Kept, Sent, Source};
use belated_cluster::wire::{self, Frame, FETCH, KEEP, RUN, SEND};
use belated_cluster::{Error, MemoryLimit, Spec, WorkerProcess, Workers};
use belated_core::{
    current_worker, lineage, placement, Graph, Runner, TaskId, ThreadPool, KEPT_POOLS,
};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};
use rustc_hash::FxHashMap;

use crate::codec::{decode_reply, frames_from, frames_of, helper};
use crate::errors::CancelledError;
use crate::errors::{cluster_error, BelatedError, WorkerLostError, WorkerStartError};
use crate::host::{PythonHost, TaskGuard, MAX_THREADS};
use crate::task::{PyValue, TaskNode, Work};

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
/// pickled by reference included).
fn worker_spec(py: Python<'_>, connections: usize, preload: Vec<String>) -> PyResult<Spec> {
    let sys = py.import("sys")?;
    let separator: String = py.import("os")?.getattr("pathsep")?.extract()?;
    let path: Vec<String> = sys.getattr("path")?.extract()?;
    let args = ["-c", WORKER_BOOTSTRAP].map(String::from);
    Ok(Spec {
        program: sys.getattr("executable")?.extract()?,
        args: [&args[..], &[connections.to_string(), preload.join(",")]].concat(),
        env: vec![("BELATED_WORKER_PATH".to_string(), path.join(&separator))],
        connections,
        start_timeout: START_TIMEOUT,
    })
}

/// The worker processes running one computation's tasks right now, so cancelling the computation
/// can kill them (a task may never return by itself).
#[derive(Default)]
pub(crate) struct Running {
    cancelled: AtomicBool,
    workers: Mutex<Vec<Arc<WorkerProcess>>>,
}

impl Running {
    /// Registers `worker` as running one of the computation's tasks until the guard drops; `None`
    /// once the computation is cancelled.
    pub(crate) fn enter(&self, worker: &Arc<WorkerProcess>) -> Option<RunningGuard<'_>> {
        let mut workers = self.workers.lock();
        if self.cancelled() {
            return None;
        }
        workers.push(Arc::clone(worker));
        Some(RunningGuard {
            running: self,
            worker: Arc::clone(worker),
        })
    }

    /// Cancels the computation: kills every worker running one of its tasks.
    pub(crate) fn cancel(&self) {
        let workers = self.workers.lock();
        self.cancelled.store(true, SeqCst);
        for worker in workers.iter() {
            worker.kill();
        }
    }

    pub(crate) fn cancelled(&self) -> bool {
        self.cancelled.load(SeqCst)
    }

    pub(crate) fn cancelled_error() -> PyErr {
        CancelledError::new_err("the computation was cancelled")
    }
}

pub(crate) struct RunningGuard<'a> {
    running: &'a Running,
    worker: Arc<WorkerProcess>,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        let mut workers = self.running.workers.lock();
        if let Some(at) = workers.iter().position(|w| Arc::ptr_eq(w, &self.worker)) {
            workers.swap_remove(at);
        }
    }
}

/// What the cluster has done that a user may ask about.
#[derive(Default)]
struct Stats {
    transferred: AtomicU64,
    uploaded: AtomicU64,
    recomputed: AtomicU64,
}

pub(crate) struct ClusterShared {
    /// The process that started the workers. A child forked from it has none of the pool's threads and
    /// must not stop the parent's workers: there the cluster is refused and let go of untouched.
    owner: u32,
    threads_per_worker: usize,
    workers: Arc<Workers>,
    /// Where each value lives (the workers'), closed with them.
    directory: Arc<Directory>,
    stats: Stats,
}

/// Why a request to a worker failed: it died (its group and generation), or the computation was
/// cancelled.
enum Failed {
    Lost(usize, u64),
    Cancelled,
}

impl ClusterShared {
    pub(crate) fn workers(&self) -> usize {
        self.workers.len()
    }

    pub(crate) fn threads_per_worker(&self) -> usize {
        self.threads_per_worker
    }

    fn generation(&self, group: usize) -> u64 {
        self.directory.generation(group)
    }

    fn closed(&self) -> bool {
        self.directory.is_closed()
    }

    fn worker(&self, group: usize, generation: u64) -> Option<Arc<WorkerProcess>> {
        self.workers.worker(group, generation)
    }

    fn replace(&self, group: usize, generation: u64) -> Result<String, Error> {
        self.workers.replace(group, generation)
    }

    /// Sends a request to the worker of `group` at `generation`, on this pool thread's connection.
    fn run_on(
        &self,
        group: usize,
        generation: u64,
        frames: &[Frame],
        running: &Running,
    ) -> Result<Vec<Frame>, Failed> {
        let lost = Failed::Lost(group, generation);
        let worker = self.worker(group, generation).ok_or(lost)?;
        let Some(_running) = running.enter(&worker) else {
            return Err(Failed::Cancelled);
        };
        let thread = current_worker().expect("cluster tasks run on the cluster's threads")
            % self.threads_per_worker;
        worker
            .exchange(thread, frames)
            .map_err(|_| Failed::Lost(group, generation))
    }

    /// The reply of the worker of `group` to a fetch of `ids`: a pickled list of their values.
    fn fetch(&self, group: usize, generation: u64, ids: &[u64]) -> Result<Vec<Frame>, Failed> {
        let worker = self
            .worker(group, generation)
            .ok_or(Failed::Lost(group, generation))?;
        let mut fetches = worker.connection(self.threads_per_worker);
        let releases = self.directory.take_releases(group);
        let mut rest = Vec::with_capacity(ids.len() + 1);
        rest.push(ids.len() as u64);
        rest.extend_from_slice(ids);
        fetches
            .exchange(&[wire::header(FETCH, &releases, &rest).into()])
            .map_err(|_| Failed::Lost(group, generation))
    }

    /// Sends every worker the releases waiting for it, so results nobody needs stop taking memory
    /// between computations.
    pub(crate) fn flush_releases(&self) {
        for group in 0..self.workers() {
            if self.directory.has_releases(group) {
                let _ = self.fetch(group, self.generation(group), &[]);
            }
        }
    }

    fn forked(&self) -> bool {
        std::process::id() != self.owner
    }

    fn close(&self) {
        // Dropping a worker kills it: only its owner may.
        self.workers.close(self.forked());
    }
}

/// A task's result as a cluster computation holds it.
pub(crate) type Held = directory::Held<PyValue>;

/// Values built here of at least this many bytes are sent to a worker once and kept there; smaller
/// ones travel inside each call that needs them.
const SEND_ONCE_BYTES: u64 = 64 * 1024;

/// What a call's request carries of other workers' values: their replies' frames, and the header
/// words saying which ids to store them under.
type Fetched = Result<(Vec<Frame>, Vec<u64>), Failed>;

/// Values to fetch from one worker and store in another before a call.
struct Transfer {
    source: Arc<Kept>,
    copy_id: u64,
}

/// A large value built here, to store in the call's worker before the call.
struct Upload {
    frames: Vec<Frame>,
    copy_id: u64,
    bytes: u64,
    sent: Arc<Sent>,
}

/// A task's call, ready to send.
struct Prepared {
    inputs: Vec<PyValue>,
    transfers: Vec<Transfer>,
    uploads: Vec<Upload>,
    in_workers: bool,
}

pub(crate) struct ClusterRunner {
    cluster: Arc<ClusterShared>,
    nodes: Arc<[Arc<TaskNode>]>,
    graph: Graph,
    /// Per task: whether its result stays in its worker (other tasks need it) and/or comes back.
    flags: Vec<u8>,
    guard: TaskGuard,
    retries: usize,
    /// The result each task last produced in a worker, for recomputing what a lost worker held.
    produced: Mutex<Vec<Weak<Kept>>>,
    pub(crate) running: Arc<Running>,
}

impl ClusterRunner {
    pub(crate) fn new(
        cluster: &Arc<ClusterShared>,
        nodes: &Arc<[Arc<TaskNode>]>,
        graph: &Graph,
        outputs: &[TaskId],
        guard: TaskGuard,
        retries: usize,
    ) -> Self {
        let mut flags: Vec<u8> = graph
            .tasks()
            .map(|task| {
                if graph.dependents(task).is_empty() {
                    0
                } else {
                    KEEP
                }
            })
            .collect();
        for output in outputs {
            flags[output.index()] |= SEND;
        }
        ClusterRunner {
            cluster: Arc::clone(cluster),
            nodes: Arc::clone(nodes),
            graph: graph.clone(),
            flags,
            guard,
            retries,
            produced: Mutex::new(graph.tasks().map(|_| Weak::new()).collect()),
            running: Arc::default(),
        }
    }

    fn stored<'py>(py: Python<'py>, id: u64) -> PyResult<PyValue> {
        static STORED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        Ok(PyValue(
            helper(py, &STORED, "Stored")?.call1((id,))?.unbind(),
        ))
    }

    fn prepare(
        &self,
        py: Python<'_>,
        task: TaskId,
        inputs: &[Held],
        group: usize,
    ) -> PyResult<Option<Prepared>> {
        let mut prepared = Prepared {
            inputs: Vec::with_capacity(inputs.len()),
            transfers: Vec::new(),
            uploads: Vec::new(),
            in_workers: false,
        };
        for (held, &dep) in inputs.iter().zip(self.graph.deps(task)) {
            let value = match held.source(&self.cluster.directory, group) {
                Source::Here(value) => match self.upload(py, task, held, &value)? {
                    Some(upload) => {
                        prepared.in_workers = true;
                        let stored = Self::stored(py, upload.copy_id)?;
                        prepared.uploads.push(upload);
                        stored
                    }
                    None => value,
                },
                Source::InMyWorker(id) => {
                    prepared.in_workers = true;
                    Self::stored(py, id)?
                }
                Source::Elsewhere(source) => {
                    prepared.in_workers = true;
                    let copy_id = self.cluster.directory.new_id();
                    prepared.transfers.push(Transfer { source, copy_id });
                    Self::stored(py, copy_id)?
                }
                Source::Lost => {
                    let recovered = self.recover(py, dep, group)?;
                    if let (Some(original), Some(copy)) = (&held.remote, &recovered.remote) {
                        original.add_copy(Arc::clone(copy));
                    }
                    match recovered.source(&self.cluster.directory, group) {
                        Source::Here(value) => value,
                        Source::InMyWorker(id) => {
                            prepared.in_workers = true;
                            Self::stored(py, id)?
                        }
                        // The worker died again at once: try the whole task again.
                        Source::Elsewhere(_) | Source::Lost => return Ok(None),
                    }
                }
            };
            prepared.inputs.push(value);
        }
        Ok(Some(prepared))
    }

    /// `value` (built here for `held`, an input of `task`) as an upload to this thread's worker, if
    /// it is large enough that sending it once beats sending it with every call.
    fn upload(
        &self,
        py: Python<'_>,
        task: TaskId,
        held: &Held,
        value: &PyValue,
    ) -> PyResult<Option<Upload>> {
        static NBYTES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let Some(sent) = &held.sent else {
            return Ok(None);
        };
        let value = value.0.bind(py);
        let bytes = match sent.bytes.get() {
            Some(&bytes) => bytes,
            None => {
                let bytes = helper(py, &NBYTES, "nbytes")?.call1((value,))?.extract()?;
                *sent.bytes.get_or_init(|| bytes)
            }
        };
        if bytes < SEND_ONCE_BYTES {
            return Ok(None);
        }
        let frames = match sent.frames.get() {
            Some(frames) => frames.clone(),
            None => {
                // Framed as a worker's reply to a fetch, which is how a call's worker receives
                // stored values.
                let reply = (true, PyList::new(py, [value])?);
                let frames =
                    helper(py, &DUMPS, "dumps")?
                        .call1((reply, true))
                        .map_err(|error| {
                            BelatedError::new_err(format!(
                            "an input of task {} cannot be sent to a worker process: {error}; make \
                             it picklable, or use scheduler='threads'",
                            self.nodes[task.index()].payload().key_string(py)
                        ))
                        })?;
                let frames = frames_from(py, &frames)?;
                sent.frames.get_or_init(|| frames).clone()
            }
        };
        Ok(Some(Upload {
            frames,
            copy_id: self.cluster.directory.new_id(),
            bytes,
            sent: Arc::clone(sent),
        }))
    }

    /// Fetches the values a call needs from other workers and adds those built here: frames to
    /// send, and header words.
    fn fetch_transfers(&self, transfers: &[Transfer], uploads: &mut [Upload]) -> Fetched {
        let mut by_source: FxHashMap<(usize, u64), Vec<&Transfer>> = FxHashMap::default();
        for transfer in transfers {
            by_source
                .entry((transfer.source.worker, transfer.source.generation))
                .or_default()
                .push(transfer);
        }
        let blocks = by_source.len() + uploads.len();
        let (mut frames, mut words) = (Vec::new(), vec![blocks as u64]);
        for upload in uploads {
            words.extend([1, upload.copy_id, upload.frames.len() as u64]);
            frames.append(&mut upload.frames);
        }
        for ((group, generation), transfers) in by_source {
            let ids: Vec<u64> = transfers.iter().map(|t| t.source.id).collect();
            let reply = self.cluster.fetch(group, generation, &ids)?;
            words.push(ids.len() as u64);
            words.extend(transfers.iter().map(|t| t.copy_id));
            words.push(reply.len() as u64);
            frames.extend(reply);
        }
        self.cluster
            .stats
            .transferred
            .fetch_add(transfers.len() as u64, SeqCst);
        Ok((frames, words))
    }

    /// Runs `task` on this thread's worker, retrying when a worker it depends on dies.
    fn evaluate(&self, py: Python<'_>, task: TaskId, inputs: &[Held], flags: u8) -> PyResult<Held> {
        let group = current_worker().expect("cluster tasks run on the cluster's threads")
            / self.cluster.threads_per_worker;
        let payload = self.nodes[task.index()].payload();
        let mut failures = 0;
        let mut why = String::new();
        while failures <= self.retries {
            let Some(mut prepared) = self.prepare(py, task, inputs, group)? else {
                failures += 1;
                why = "a worker died while its inputs were recomputed".to_string();
                continue;
            };
            let call = if prepared.in_workers {
                payload.prepare_remote(py, &prepared.inputs)?
            } else {
                match payload.prepare(py, &prepared.inputs)? {
                    Work::Ready(value) => {
                        return Ok(Held {
                            local: Some(PyValue(value.unbind())),
                            remote: None,
                            sent: Some(Arc::default()),
                        })
                    }
                    Work::Call(call) => call,
                }
            };
            let call_frames = frames_of(py, &call).map_err(|error| {
                BelatedError::new_err(format!(
                    "task {} cannot be sent to a worker process: {error}; make its function and \
                     arguments picklable, or use scheduler='threads'",
                    payload.key_string(py)
                ))
            })?;
            let result_id = self.cluster.directory.new_id();
            let generation = self.cluster.generation(group);
            let outcome = py.detach(|| {
                let (transfer_frames, mut words) =
                    self.fetch_transfers(&prepared.transfers, &mut prepared.uploads)?;
                let mut rest = vec![result_id, u64::from(flags)];
                rest.append(&mut words);
                let releases = self.cluster.directory.take_releases(group);
                let mut request = vec![wire::header(RUN, &releases, &rest).into()];
                request.extend(transfer_frames);
                request.extend(call_frames);
                self.cluster
                    .run_on(group, generation, &request, &self.running)
            });
            why = match outcome {
                Ok(reply) => {
                    // The worker stored the values it received even if the task then failed.
                    for transfer in &prepared.transfers {
                        let source = &transfer.source;
                        let copy = Kept::new(
                            &self.cluster.directory,
                            transfer.copy_id,
                            group,
                            generation,
                            source.bytes,
                        );
                        source.add_copy(copy);
                    }
                    let uploaded = prepared.uploads.len() as u64;
                    self.cluster.stats.uploaded.fetch_add(uploaded, SeqCst);
                    for upload in &prepared.uploads {
                        let copy = Kept::new(
                            &self.cluster.directory,
                            upload.copy_id,
                            group,
                            generation,
                            upload.bytes,
                        );
                        upload.sent.add_copy(copy);
                    }
                    let value = decode_reply(py, &reply)?;
                    let remote = if flags & KEEP != 0 {
                        // A kept result that is not sent back comes with its size in its place.
                        let bytes = if flags & SEND != 0 {
                            reply.iter().map(|frame| frame.len() as u64).sum()
                        } else {
                            value.extract()?
                        };
                        Some(Kept::new(
                            &self.cluster.directory,
                            result_id,
                            group,
                            generation,
                            bytes,
                        ))
                    } else {
                        None
                    };
                    if let Some(remote) = &remote {
                        let mut produced = self.produced.lock();
                        if produced[task.index()].strong_count() == 0 {
                            produced[task.index()] = Arc::downgrade(remote);
                        }
                    }
                    let local = (flags & SEND != 0).then(|| PyValue(value.unbind()));
                    return Ok(Held {
                        local,
                        remote,
                        sent: None,
                    });
                }
                Err(Failed::Cancelled) => return Err(Running::cancelled_error()),
                // Killed by a cancel, or by close(): either way the computation is over, and the
                // next one finds a new worker in its place.
                Err(Failed::Lost(lost, generation))
                    if self.running.cancelled() || self.cluster.closed() =>
                {
                    let _ = py.detach(|| self.cluster.replace(lost, generation));
                    return Err(Running::cancelled_error());
                }
                Err(Failed::Lost(lost, generation)) => py
                    .detach(|| self.cluster.replace(lost, generation))
                    .map_err(|error| {
                        cluster_error(
                            error,
                            &format!("task {} could not run", payload.key_string(py)),
                        )
                    })?,
            };
            failures += 1;
        }
        Err(WorkerLostError::new_err(format!(
            "task {} failed after {failures} tries: its worker process died; the last time, {why}. \
             A task that kills its process (os._exit, a crash, running out of memory) fails again \
             when retried; raise retries= for failures that come and go",
            payload.key_string(py),
        )))
    }

    /// Recomputes `lost` on this thread's worker, with whatever of its lineage was lost too, inputs
    /// first ([`lineage::recompute_order`]).
    fn recover(&self, py: Python<'_>, lost: TaskId, group: usize) -> PyResult<Held> {
        let available = |task: TaskId| -> Option<Held> {
            let remote = self.produced.lock()[task.index()].upgrade()?;
            let held = Held {
                local: None,
                remote: Some(remote),
                sent: None,
            };
            (!matches!(held.source(&self.cluster.directory, group), Source::Lost)).then_some(held)
        };
        let mut held: FxHashMap<TaskId, Held> = FxHashMap::default();
        let order = lineage::recompute_order(&self.graph, lost, |task| {
            available(task)
                .map(|found| held.insert(task, found))
                .is_some()
        });
        for task in order {
            let inputs: Vec<Held> = self
                .graph
                .deps(task)
                .iter()
                .map(|dep| held[dep].clone())
                .collect();
            let recomputed = self.evaluate(py, task, &inputs, KEEP)?;
            self.cluster.stats.recomputed.fetch_add(1, SeqCst);
            held.insert(task, recomputed);
        }
        Ok(held
            .remove(&lost)
            .expect("recompute_order ends with the lost task"))
    }
}

impl Runner for ClusterRunner {
    type Value = Held;
    type Error = PyErr;

    fn run(&self, task: TaskId, inputs: &[Held]) -> PyResult<Held> {
        Python::attach(|py| {
            let key = self.guard.before(py, &self.nodes[task.index()])?;
            let held = self.evaluate(py, task, inputs, self.flags[task.index()])?;
            if let Some(key) = key {
                let value = match &held.local {
                    Some(value) => value.0.bind(py).clone(),
                    None => py.None().into_bound(py),
                };
                self.guard.after(py, &key, &value)?;
            }
            Ok(held)
        })
    }

    /// The worker holding most of the inputs' bytes ([`placement::most_input_bytes`]).
    fn place(&self, _task: TaskId, inputs: &mut dyn Iterator<Item = &Held>) -> Option<usize> {
        let held = inputs.filter_map(|held| held.remote.as_ref().map(|r| (r.worker, r.bytes)));
        placement::most_input_bytes(self.cluster.workers(), held)
    }
}

/// A local cluster's processes and threads (`belated.Client()` without an address).
#[pyclass(module = "belated._belated", frozen)]
pub(crate) struct Cluster {
    pub(crate) shared: Arc<ClusterShared>,
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
    ) -> PyResult<Self> {
        // One connection per pool thread of its group, and one for fetches.
        let spec = worker_spec(py, threads_per_worker + 1, preload)?;
        let workers = py
            .detach(|| Workers::start(spec, n_workers, memory_limit))
            .map_err(|error| cluster_error(error, "could not start the cluster"))?;
        let shared = Arc::new(ClusterShared {
            owner: std::process::id(),
            threads_per_worker,
            directory: Arc::clone(workers.directory()),
            workers,
            stats: Stats::default(),
        });
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
    // Started without the registry's lock, which a thread holding the interpreter may wait for.
    let started = Arc::new(Cluster::start(py, workers, 1, None, Vec::new())?);
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
        n_workers, threads_per_worker, memory_limit=None, preload=Vec::new(), memory_limit_text=None
    ))]
    fn new(
        py: Python<'_>,
        n_workers: usize,
        threads_per_worker: usize,
        memory_limit: Option<u64>,
        preload: Vec<String>,
        memory_limit_text: Option<String>,
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
        Self::start(py, n_workers, threads_per_worker, memory_limit, preload)
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
        self.shared.threads_per_worker
    }

    #[getter]
    fn memory_limit(&self) -> Option<u64> {
        self.shared.workers.memory_limit()
    }

    /// The process ids of the running workers.
    #[getter]
    fn pids(&self) -> Vec<u32> {
        self.shared.workers.pids()
    }

    /// Counts of results moved between workers, large values built here sent to a worker to keep,
    /// tasks recomputed after a worker was lost, and workers replaced.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = &self.shared.stats;
        let dict = PyDict::new(py);
        dict.set_item("transferred", stats.transferred.load(SeqCst))?;
        dict.set_item("uploaded", stats.uploaded.load(SeqCst))?;
        dict.set_item("recomputed", stats.recomputed.load(SeqCst))?;
        dict.set_item("replaced", self.shared.workers.replaced())?;
        Ok(dict)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shut();
    }
}
