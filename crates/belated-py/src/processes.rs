//! The `processes` scheduler: tasks run in worker processes, so CPU-bound Python runs in parallel.
//!
//! Policy and invariants:
//! - Each thread of a processes pool owns one worker process (`python -m belated._worker`), started on
//!   its first task and kept for later computes: the pool is started once, not per compute.
//! - The thread builds the call's arguments, pickles them (cloudpickle, protocol 5 with out-of-band
//!   buffers), and lets go of the interpreter while the worker runs: other threads keep scheduling.
//! - Talk is over the worker's standard input and output only: private pipes, no port. A worker dies
//!   with its parent (`PR_SET_PDEATHSIG`) and ends when its pipe closes.
//! - A worker that dies mid-task (killed, `os._exit`, a crash) is replaced and the task retried, up to
//!   `retries` times; then the computation fails with an error naming the task.
//! - Tasks that only assemble values (literals, containers of results) run in the parent.

use std::cell::RefCell;
use std::io::{BufReader, BufWriter, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};

use crate::errors::{BelatedError, WorkerLostError};
use crate::task::{Call, PyTask};

/// How a processes pool starts its workers.
#[derive(Clone)]
pub(crate) struct Launch {
    pub(crate) python: String,
    /// The parent's `sys.path`, so workers import what the parent imports (functions pickled by
    /// reference included).
    pub(crate) path: String,
    pub(crate) retries: usize,
    /// Modules a cluster's workers import once they listen.
    pub(crate) preload: Vec<String>,
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
            preload: Vec::new(),
        })
    }
}

struct Worker {
    child: Child,
    requests: BufWriter<ChildStdin>,
    replies: BufReader<ChildStdout>,
}

impl Worker {
    fn start(launch: &Launch) -> std::io::Result<Self> {
        let mut child = Command::new(&launch.python)
            .args(["-m", "belated._worker"])
            .env("PYTHONPATH", &launch.path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let requests = BufWriter::new(child.stdin.take().expect("stdin is piped"));
        let replies = BufReader::new(child.stdout.take().expect("stdout is piped"));
        Ok(Worker {
            child,
            requests,
            replies,
        })
    }

    /// Sends one message and waits for the reply; an error means the worker is gone.
    fn exchange(&mut self, frames: &[Vec<u8>]) -> std::io::Result<Vec<Vec<u8>>> {
        exchange(&mut self.requests, &mut self.replies, frames)
    }

    /// How the worker ended (for error messages); its pipe has broken, so it has or soon will.
    fn ending(&mut self) -> String {
        exit_status(&mut self.child)
    }
}

/// How a worker whose connection broke ended: its exit status once it has one (waiting up to 2 s),
/// else "unresponsive".
pub(crate) fn exit_status(child: &mut Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => return "unresponsive".to_string(),
            Err(error) => return error.to_string(),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing its pipe ends the worker; reap it so no zombie is left. A worker stuck in a task
        // would keep the pool's thread waiting here, so it is killed instead.
        let _ = self.requests.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one message (its frames) and reads the reply, in the framing of `belated._worker`.
pub(crate) fn exchange(
    requests: &mut impl Write,
    replies: &mut impl Read,
    frames: &[Vec<u8>],
) -> std::io::Result<Vec<Vec<u8>>> {
    requests.write_all(&(frames.len() as u64).to_le_bytes())?;
    for frame in frames {
        requests.write_all(&(frame.len() as u64).to_le_bytes())?;
        requests.write_all(frame)?;
    }
    requests.flush()?;
    let count = read_u64(replies)?;
    (0..count)
        .map(|_| {
            let mut frame = vec![0u8; read_u64(replies)? as usize];
            replies.read_exact(&mut frame)?;
            Ok(frame)
        })
        .collect()
}

fn read_u64(reader: &mut impl Read) -> std::io::Result<u64> {
    let mut bytes = [0u8; 8];
    reader.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

thread_local! {
    /// The worker process owned by this pool thread.
    static WORKER: RefCell<Option<Worker>> = const { RefCell::new(None) };
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
            // The buffer protocol is not in the stable ABI before 3.11, so out-of-band buffers are
            // read through `bytes()`: one more copy of each, only for calls with large arguments.
            Err(_) => {
                let bytes = py.get_type::<PyBytes>().call1((&frame,))?;
                Ok(bytes.cast::<PyBytes>()?.as_bytes().to_vec())
            }
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
    let frames = frames_of(py, &call).map_err(|error| {
        BelatedError::new_err(format!(
            "task {} cannot be sent to a worker process: {error}; make its function and arguments \
             picklable, or use scheduler='threads'",
            task.key_string(py)
        ))
    })?;
    let mut lost = 0;
    let reply = loop {
        let outcome = py.detach(|| {
            WORKER.with_borrow_mut(|slot| {
                if slot.is_none() {
                    *slot = Some(
                        Worker::start(launch)
                            .map_err(|e| format!("could not start a worker process: {e}"))?,
                    );
                }
                let worker = slot.as_mut().expect("started above");
                worker.exchange(&frames).map_err(|_| {
                    let ending = slot.take().expect("present").ending();
                    // Dropping it reaps the process, killing it first if it somehow lives on.
                    format!("its worker process died ({ending})")
                })
            })
        });
        match outcome {
            Ok(reply) => break reply,
            Err(_) if lost < launch.retries => lost += 1,
            Err(why) => {
                return Err(WorkerLostError::new_err(format!(
                    "task {} failed after {} tries: {why}. A task that kills its process (os._exit, a \
                     crash, running out of memory) fails again when retried; raise retries= for failures \
                     that come and go",
                    task.key_string(py),
                    lost + 1,
                )))
            }
        }
    };
    decode_reply(py, &reply)
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
        crate::errors::add_note(
            py,
            &error,
            format!("traceback in the worker process:\n{remote_traceback}"),
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
