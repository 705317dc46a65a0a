//! The `processes` scheduler: tasks run in worker processes, so CPU-bound Python runs in parallel.
//!
//! Policy and invariants:
//! - Each thread of a processes pool owns one worker process ([`WorkerProcess`] with one
//!   connection), started on its first task and kept for later computes: the pool is started once,
//!   not per compute. The process is started by that long-lived thread, so it dies with it.
//! - The thread builds the call's arguments, pickles them (cloudpickle, protocol 5 with out-of-band
//!   buffers), and lets go of the interpreter while the worker runs: other threads keep scheduling.
//! - A worker that dies mid-task (killed, `os._exit`, a crash) is replaced and the task retried, up to
//!   `retries` times; then the computation fails with an error naming the task.
//! - A cancelled computation (Ctrl-C, its timeout, a future's `cancel()`) kills the workers running
//!   its tasks ([`Running`]); their threads start new ones, so nothing waits for cancelled work.
//! - Tasks that only assemble values (literals, containers of results) run in the parent.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use belated_cluster::{wire, Spec, WorkerProcess};
use parking_lot::Mutex;
use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};

use crate::errors::{BelatedError, CancelledError, WorkerLostError, WorkerStartError};
use crate::task::{Call, PyTask};

/// How long a new worker may take to import its modules and say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How a computation on worker processes starts its workers, and what it runs in them.
#[derive(Clone)]
pub(crate) struct Launch {
    pub(crate) python: String,
    /// The parent's `sys.path`, so workers import what the parent imports (functions pickled by
    /// reference included).
    pub(crate) path: String,
    pub(crate) retries: usize,
    pub(crate) running: Arc<Running>,
}

impl Launch {
    pub(crate) fn from_interpreter(py: Python<'_>, retries: usize) -> PyResult<Self> {
        let sys = py.import("sys")?;
        let separator: String = py.import("os")?.getattr("pathsep")?.extract()?;
        let path: Vec<String> = sys.getattr("path")?.extract()?;
        Ok(Launch {
            python: sys.getattr("executable")?.extract()?,
            path: path.join(&separator),
            retries,
            running: Arc::default(),
        })
    }

    /// How to start a worker with `connections` connections that imports `preload` once ready.
    pub(crate) fn spec(&self, connections: usize, preload: Vec<String>) -> Spec {
        Spec {
            python: self.python.clone(),
            path: self.path.clone(),
            connections,
            preload,
            start_timeout: START_TIMEOUT,
        }
    }
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

thread_local! {
    /// The worker process owned by this pool thread.
    static WORKER: RefCell<Option<Arc<WorkerProcess>>> = const { RefCell::new(None) };
}

/// Why a call did not come back from a worker.
enum Failed {
    Start(belated_cluster::Error),
    Died(String),
    Cancelled,
}

pub(crate) fn helper<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(cell.import(py, "belated._worker", name)?.clone())
}

/// Pickles `call` into frames: the pickle, then its out-of-band buffers.
pub(crate) fn frames_of(py: Python<'_>, call: &Call<'_>) -> PyResult<Vec<Vec<u8>>> {
    static DUMPS_CALL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let frames =
        helper(py, &DUMPS_CALL, "dumps_call")?.call1((&call.func, &call.args, &call.kwargs))?;
    frames_from(py, &frames)
}

/// The frames `_worker`'s picklers return (bytes, and buffers of out-of-band data), as owned bytes.
pub(crate) fn frames_from(py: Python<'_>, frames: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u8>>> {
    frames
        .cast::<PyList>()?
        .iter()
        .map(|frame| match frame.cast::<PyBytes>() {
            Ok(bytes) => Ok(bytes.as_bytes().to_vec()),
            Err(_) => PyBuffer::<u8>::get(&frame)?.to_vec(py),
        })
        .collect()
}

/// Runs `task`'s call in this thread's worker process, replacing the worker if it dies.
pub(crate) fn run_remote<'py>(
    py: Python<'py>,
    task: &PyTask,
    call: Call<'py>,
    launch: &Launch,
) -> PyResult<Bound<'py, PyAny>> {
    let mut frames = vec![wire::header(wire::RUN, &[], &[0, u64::from(wire::SEND), 0])];
    frames.extend(frames_of(py, &call).map_err(|error| {
        BelatedError::new_err(format!(
            "task {} cannot be sent to a worker process: {error}; make its function and arguments \
             picklable, or use scheduler='threads'",
            task.key_string(py)
        ))
    })?);
    let mut lost = 0;
    let reply = loop {
        match py.detach(|| run_in_my_worker(launch, &frames)) {
            Ok(reply) => break reply,
            Err(Failed::Cancelled) => return Err(Running::cancelled_error()),
            Err(Failed::Start(error)) => return Err(WorkerStartError::new_err(error.to_string())),
            Err(Failed::Died(_)) if lost < launch.retries => lost += 1,
            Err(Failed::Died(why)) => {
                return Err(WorkerLostError::new_err(format!(
                    "task {} failed after {} tries: its worker process died ({why}). A task that kills \
                     its process (os._exit, a crash, running out of memory) fails again when retried; \
                     raise retries= for failures that come and go",
                    task.key_string(py),
                    lost + 1,
                )))
            }
        }
    };
    decode_reply(py, &reply)
}

fn run_in_my_worker(launch: &Launch, frames: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, Failed> {
    let worker = WORKER.with_borrow_mut(|slot| {
        if slot.is_none() {
            let spec = launch.spec(1, Vec::new());
            *slot = Some(Arc::new(
                WorkerProcess::spawn(&spec).map_err(Failed::Start)?,
            ));
        }
        Ok(Arc::clone(slot.as_ref().expect("started above")))
    })?;
    let Some(_running) = launch.running.enter(&worker) else {
        return Err(Failed::Cancelled);
    };
    worker.exchange(0, frames).map_err(|_| {
        // Forgetting it kills and reaps it (once this call lets go of it too); the next call starts
        // a new one.
        WORKER.with_borrow_mut(|slot| *slot = None);
        if launch.running.cancelled() {
            Failed::Cancelled
        } else {
            Failed::Died(worker.exit_status())
        }
    })
}

/// A worker's reply: the value, or the task's own exception with the worker's traceback as a note.
pub(crate) fn decode_reply<'py>(py: Python<'py>, reply: &[Vec<u8>]) -> PyResult<Bound<'py, PyAny>> {
    static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let frames = PyList::new(py, reply.iter().map(|frame| PyBytes::new(py, frame)))?;
    let reply = helper(py, &LOADS, "loads")?.call1((frames,))?;
    if reply.get_item(0)?.is_truthy()? {
        return reply.get_item(1);
    }
    let error = PyErr::from_value(reply.get_item(1)?);
    let remote_traceback: String = reply.get_item(2)?.extract()?;
    if !remote_traceback.is_empty() {
        // The exception is the task's own; its frames ran in the worker, so they come as a note.
        let _ = error.value(py).call_method1(
            "add_note",
            (format!(
                "traceback in the worker process:\n{remote_traceback}"
            ),),
        );
    }
    Err(error)
}

/// Checks, before anything runs, that every task's function and literal arguments can be pickled, so
/// that an unpicklable object is reported with its task instead of halfway through a computation.
pub(crate) fn check_picklable(
    py: Python<'_>,
    nodes: &[std::sync::Arc<crate::task::TaskNode>],
) -> PyResult<()> {
    use crate::task::{Arg, Op};
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let dumps = helper(py, &DUMPS, "dumps")?;
    let mut checked = rustc_hash::FxHashSet::default();
    for node in nodes {
        let task = node.payload();
        let (func, args) = match &task.op {
            Op::Value(_) => continue,
            Op::Call { func, args, .. } => (Some(func), args),
            Op::Method { args, .. } => (None, args),
        };
        for arg in func.into_iter().chain(args.iter()) {
            let Arg::Value(object) = arg else { continue };
            if !checked.insert(object.as_ptr() as usize) {
                continue;
            }
            if let Err(error) = dumps.call1((object,)) {
                return Err(BelatedError::new_err(format!(
                    "task {} cannot be sent to a worker process: {} cannot be pickled ({error}); make it \
                     picklable, or use scheduler='threads'",
                    task.key_string(py),
                    object.bind(py).repr().map_or_else(|_| "an argument".to_string(), |r| r.to_string()),
                )));
            }
        }
    }
    Ok(())
}
