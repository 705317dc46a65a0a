//! What runs around Python tasks on any engine thread: worker threads that stay attached to the
//! interpreter, and the guard every task passes (Ctrl-C, the time limit, the per-task callbacks).
//! A leaf module: the compute front and the cluster runner both use it, and it uses neither.
//!
//! A thread running tasks holds the interpreter from one task to the next, and offers it to other
//! threads between tasks ([`crate::gil`]).

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use belated_core::{current_worker, on_worker_thread, ThreadHost};
use parking_lot::{Condvar, Mutex};
use pyo3::exceptions::{PySystemExit, PyValueError};
use pyo3::prelude::*;

use crate::diagnostics::{ComputeState, TaskGraph};
use crate::errors::ComputeTimeoutError;
use crate::gil::offer_between_tasks;
use crate::task::TaskNode;

/// The most worker threads one pool or cluster may have. Far above any useful degree of parallelism,
/// and far below what would exhaust memory or the process's thread limit before a clear error.
pub(crate) const MAX_THREADS: usize = 4096;

/// Worker threads attach to the interpreter once for their whole life, and detach only to wait.
pub(crate) struct PythonHost;

impl ThreadHost for PythonHost {
    fn run_thread(&self, body: &mut dyn FnMut()) {
        Python::attach(|_py| body())
    }

    fn block(&self, wait: &mut (dyn FnMut() + Send)) {
        Python::attach(|py| py.detach(wait))
    }
}

/// What runs around every task: Ctrl-C, the time limit and the per-task callbacks.
pub(crate) struct TaskGuard {
    /// Inline runs hold the interpreter throughout, so they look for Ctrl-C between tasks themselves.
    pub(crate) check_signals: bool,
    /// When an inline run must give up; checked between tasks (a pool run is watched by its caller).
    pub(crate) deadline: Option<Deadline>,
    pub(crate) hooks: Option<Arc<TaskHooks>>,
}

impl TaskGuard {
    /// Checks whether the task may start and tells the `pretask` callbacks; returns its key when
    /// `posttask` callbacks will want it.
    pub(crate) fn before<'py>(
        &self,
        py: Python<'py>,
        node: &TaskNode,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        offer_between_tasks(py)?;
        if self.check_signals {
            py.check_signals()?;
        }
        Deadline::check(self.deadline)?;
        let Some(hooks) = &self.hooks else {
            return Ok(None);
        };
        let key = node.payload().key_object(py);
        let Some(_calling) = hooks.calls.begin() else {
            return Ok(None);
        };
        for pretask in &hooks.pretask {
            pretask.call1(py, (&key, &hooks.graph, &hooks.state))?;
        }
        Ok(Some(key))
    }

    /// After a task: on an inline run, whether the time limit passed while it ran. A pool's caller
    /// stops waiting at the limit; an inline run is the caller, and looked only before each task, so
    /// a compute whose last task ran past the limit ended as if in time.
    pub(crate) fn finished_in_time(&self) -> PyResult<()> {
        if self.check_signals {
            Deadline::check(self.deadline)
        } else {
            Ok(())
        }
    }

    pub(crate) fn after(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if let Some(hooks) = &self.hooks {
            let Some(_calling) = hooks.calls.begin() else {
                return Ok(());
            };
            let worker = current_worker().map_or(-1, |w| w as i64);
            for posttask in &hooks.posttask {
                posttask.call1(py, (key, value, &hooks.graph, &hooks.state, worker))?;
            }
        }
        Ok(())
    }
}

thread_local! {
    /// How many tasks run on this thread, one inside the other (a task computing a graph inline).
    static TASK_DEPTH: Cell<usize> = const { Cell::new(0) };
    /// In a forked child, on the copy of a worker thread whose task forked: that task's depth.
    static FORKED_AT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Called in a forked child, on the thread that forked: notes which task forked, on a worker thread.
pub(crate) fn note_fork_in_child() {
    let depth = TASK_DEPTH.get();
    if on_worker_thread() && depth > 0 {
        FORKED_AT.set(Some(depth));
    }
}

/// Runs one task's call (`call`), counted in [`TASK_DEPTH`]; in a child forked by that call on a
/// worker thread, ends the child when it comes back ([`end_forked_child`]).
pub(crate) fn call_task<T>(py: Python<'_>, call: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    struct Depth(usize);
    impl Drop for Depth {
        fn drop(&mut self) {
            TASK_DEPTH.set(self.0 - 1);
        }
    }
    let depth = Depth(TASK_DEPTH.get() + 1);
    TASK_DEPTH.set(depth.0);
    let outcome = call();
    if FORKED_AT.get() == Some(depth.0) {
        end_forked_child(py, &outcome);
    }
    outcome
}

/// Ends the process where a task that forked on a worker thread came back, in the child, with
/// `outcome`. The child is that one thread: nothing there waits for the result, and the engine, waiting
/// for the pool's other threads, would wait forever, as would a parent that waits for the child. It ends
/// as a child that returned from its code ends, after printing the exception it raised (status 1; a
/// `SystemExit` gives its code), its output flushed, without running the parent's exit handlers. The
/// child's own computes, inline on that thread, run their tasks as usual.
fn end_forked_child<T>(py: Python<'_>, outcome: &PyResult<T>) {
    let status = match outcome {
        Ok(_) => 0,
        Err(error) if error.is_instance_of::<PySystemExit>(py) => exit_status(py, error),
        Err(error) => {
            error.print(py);
            1
        }
    };
    for stream in ["stdout", "stderr"] {
        if let Ok(stream) = py.import("sys").and_then(|sys| sys.getattr(stream)) {
            // A stream that cannot be flushed (closed, replaced) loses its output, as at any exit.
            let _ = stream.call_method0("flush");
        }
    }
    // SAFETY: _exit ends the process at once; nothing after it runs.
    unsafe { libc::_exit(status) }
}

/// The status Python exits with on `exit`: its code, 0 for None, else 1 once the code is printed.
/// (`PyErr::print` would exit here itself, running the parent's exit handlers.)
fn exit_status(py: Python<'_>, exit: &PyErr) -> i32 {
    let Ok(code) = exit.value(py).getattr("code") else {
        return 1;
    };
    if code.is_none() {
        return 0;
    }
    if let Ok(code) = code.extract::<i32>() {
        return code;
    }
    if let Ok(stderr) = py.import("sys").and_then(|sys| sys.getattr("stderr")) {
        let _ = stderr.call_method1("write", (format!("{code}\n"),));
    }
    1
}

/// A compute's time limit.
#[derive(Clone, Copy)]
pub(crate) struct Deadline {
    pub(crate) at: Instant,
    pub(crate) seconds: f64,
}

impl Deadline {
    /// The limit `seconds` from now; none when it is too far ahead to represent (`inf`, `1e300`).
    pub(crate) fn after(seconds: f64) -> PyResult<Option<Self>> {
        if seconds.is_nan() || seconds < 0.0 {
            return Err(PyValueError::new_err(format!(
                "timeout must be a number of seconds, at least 0, or None; got {seconds:?}"
            )));
        }
        Ok(Duration::try_from_secs_f64(seconds)
            .ok()
            .and_then(|limit| Instant::now().checked_add(limit))
            .map(|at| Deadline { at, seconds }))
    }

    pub(crate) fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The limit's error once `deadline` (if any) has passed.
    pub(crate) fn check(deadline: Option<Deadline>) -> PyResult<()> {
        match deadline.filter(Deadline::passed) {
            Some(deadline) => Err(deadline.error()),
            None => Ok(()),
        }
    }

    pub(crate) fn error(&self) -> PyErr {
        ComputeTimeoutError::new_err(format!(
            "the computation did not finish within {:?} s and was cancelled; tasks already running finish \
             in the background and their results are dropped",
            self.seconds
        ))
    }
}

/// The per-task callbacks of `belated.diagnostics` listeners, with what they are called with.
pub(crate) struct TaskHooks {
    pub(crate) pretask: Vec<Py<PyAny>>,
    pub(crate) posttask: Vec<Py<PyAny>>,
    pub(crate) graph: Py<TaskGraph>,
    pub(crate) state: Py<ComputeState>,
    /// The calls back under way, until the computation's callbacks are finished.
    pub(crate) calls: CallsBack,
}

/// A failed or stopped computation returns while tasks it started still run on pool threads, which
/// then call back no more, as dask's callbacks, all called from the thread that computes, end with it.
/// Finishing waits for the calls back under way, without the interpreter, which they need.
pub(crate) struct CallsBack {
    /// How many calls back are under way, or None once the callbacks are finished.
    under_way: Mutex<Option<usize>>,
    returned: Condvar,
}

/// One call back under way; counted until dropped.
pub(crate) struct CallingBack<'a>(&'a CallsBack);

impl Drop for CallingBack<'_> {
    fn drop(&mut self) {
        if let Some(under_way) = self.0.under_way.lock().as_mut() {
            *under_way -= 1;
        }
        self.0.returned.notify_all();
    }
}

impl Default for CallsBack {
    fn default() -> Self {
        CallsBack {
            under_way: Mutex::new(Some(0)),
            returned: Condvar::new(),
        }
    }
}

impl CallsBack {
    /// A call back may begin, unless the callbacks are finished.
    pub(crate) fn begin(&self) -> Option<CallingBack<'_>> {
        *self.under_way.lock().as_mut()? += 1;
        Some(CallingBack(self))
    }

    /// No call back begins from now on; returns once those under way have.
    pub(crate) fn end(&self, py: Python<'_>) {
        py.detach(|| {
            let mut under_way = self.under_way.lock();
            while under_way.is_some_and(|n| n > 0) {
                self.returned.wait(&mut under_way);
            }
            *under_way = None;
        });
    }
}
