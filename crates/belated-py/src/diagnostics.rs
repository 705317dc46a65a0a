//! What `belated.diagnostics` sees of a computation.
//!
//! A [`Tracker`] observes every task from the engine: it counts finished tasks (all a progress bar needs,
//! so a bar costs no Python call per task) and, only while a profiler listens, records when and where
//! each task ran. Callbacks receive it as a live `ComputeState`, and the graph as a read-only
//! `TaskGraph` mapping (dask hands callbacks its graph dict; this one is built lazily).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use belated_core::{Observer, TaskId};
use parking_lot::Mutex;
use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList};

use crate::errors::catch_panics;
use crate::export::Legacy;
use crate::task::TaskNode;

pub(crate) struct Tracker {
    nodes: Arc<[Arc<TaskNode>]>,
    done: AtomicUsize,
    failed: AtomicUsize,
    started: Instant,
    profile: Option<Profile>,
}

struct Profile {
    /// Nanoseconds from `started` to each task's start.
    starts: Box<[AtomicU64]>,
    spans: Mutex<Vec<Span>>,
}

struct Span {
    task: TaskId,
    start_ns: u64,
    end_ns: u64,
    worker: Option<usize>,
}

impl Tracker {
    pub(crate) fn new(nodes: Arc<[Arc<TaskNode>]>, profile: bool) -> Self {
        let profile = profile.then(|| Profile {
            starts: (0..nodes.len()).map(|_| AtomicU64::new(0)).collect(),
            spans: Mutex::new(Vec::with_capacity(nodes.len())),
        });
        Tracker {
            nodes,
            done: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            started: Instant::now(),
            profile,
        }
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }
}

impl Observer for Tracker {
    fn task_started(&self, task: TaskId, _worker: Option<usize>) {
        if let Some(profile) = &self.profile {
            profile.starts[task.index()].store(self.now_ns(), Relaxed);
        }
    }

    fn task_finished(&self, task: TaskId, worker: Option<usize>, succeeded: bool) {
        self.done.fetch_add(1, Relaxed);
        if !succeeded {
            self.failed.fetch_add(1, Relaxed);
        }
        if let Some(profile) = &self.profile {
            let span = Span {
                task,
                start_ns: profile.starts[task.index()].load(Relaxed),
                end_ns: self.now_ns(),
                worker,
            };
            profile.spans.lock().push(span);
        }
    }

    /// A task run again after a lost result counts as done once, when it finishes again.
    fn task_undone(&self, _task: TaskId, succeeded: bool) {
        self.done.fetch_sub(1, Relaxed);
        if !succeeded {
            self.failed.fetch_sub(1, Relaxed);
        }
    }
}

/// A computation in progress, as callbacks see it. Its counters move while the computation runs.
#[pyclass(module = "belated.diagnostics", frozen)]
pub(crate) struct ComputeState {
    tracker: Arc<Tracker>,
    /// `time.perf_counter()` when the computation started, so profiles use Python's clock.
    perf_base: f64,
}

impl ComputeState {
    pub(crate) fn new(tracker: Arc<Tracker>, perf_base: f64) -> Self {
        ComputeState { tracker, perf_base }
    }
}

#[pymethods]
impl ComputeState {
    /// Tasks in the computation.
    #[getter]
    fn total(&self) -> usize {
        self.tracker.nodes.len()
    }

    /// Tasks finished so far, failed ones included.
    #[getter]
    fn done(&self) -> usize {
        self.tracker.done.load(Relaxed)
    }

    #[getter]
    fn failed(&self) -> usize {
        self.tracker.failed.load(Relaxed)
    }

    /// Seconds since the computation started.
    #[getter]
    fn elapsed(&self) -> f64 {
        self.tracker.started.elapsed().as_secs_f64()
    }

    /// `(key, start, end, worker_id)` per finished task, in `time.perf_counter()` seconds; empty unless
    /// a profiler was listening. `worker_id` is the worker thread's index, or -1 for the calling thread.
    fn profile<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        catch_panics(|| {
            let Some(profile) = &self.tracker.profile else {
                return Ok(PyList::empty(py));
            };
            let seconds = |ns: u64| self.perf_base + ns as f64 * 1e-9;
            let spans = profile.spans.lock();
            let rows = spans
                .iter()
                .map(|span| {
                    let key = self.tracker.nodes[span.task.index()]
                        .payload()
                        .key_object(py);
                    let worker = span.worker.map_or(-1, |w| w as i64);
                    (key, seconds(span.start_ns), seconds(span.end_ns), worker)
                })
                .collect::<Vec<_>>();
            PyList::new(py, rows)
        })
    }
}

/// The graph of a computation as a read-only mapping: key → task in dask's legacy spec. Its keys are
/// dask's: strings, or the tuples (or other objects) tasks were named with.
#[pyclass(module = "belated.diagnostics", mapping, frozen)]
pub(crate) struct TaskGraph {
    nodes: Arc<[Arc<TaskNode>]>,
    /// Key → position, built on first lookup. Building it runs Python (keys' names, hashing), which may
    /// let other threads in; a `PyOnceLock` lets them wait without holding the interpreter, so they
    /// cannot deadlock.
    index: PyOnceLock<Py<PyDict>>,
}

impl TaskGraph {
    pub(crate) fn new(nodes: Arc<[Arc<TaskNode>]>) -> Self {
        TaskGraph {
            nodes,
            index: PyOnceLock::new(),
        }
    }

    fn keys_of<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyAny>> {
        self.nodes
            .iter()
            .map(|node| node.payload().key_object(py))
            .collect()
    }
}

#[pymethods]
impl TaskGraph {
    fn __len__(&self) -> usize {
        self.nodes.len()
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        catch_panics(|| Ok(PyList::new(py, self.keys_of(py))?.try_iter()?.into_any()))
    }

    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        catch_panics(|| PyList::new(py, self.keys_of(py)))
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        catch_panics(|| Ok(self.position(py, key)?.is_some()))
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        catch_panics(|| {
            let node = &self.nodes[self
                .position(py, key)?
                .ok_or_else(|| PyKeyError::new_err(key.clone().unbind()))?];
            let legacy = Legacy {
                py,
                dep_keys: node
                    .deps()
                    .iter()
                    .map(|dep| dep.payload().key_object(py))
                    .collect(),
            };
            legacy.op(&node.payload().op)
        })
    }
}

impl TaskGraph {
    /// Where `key` is, or None; an unhashable key raises TypeError, as a dict's lookup does.
    fn position(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<usize>> {
        let index = self.index.get_or_try_init(py, || -> PyResult<_> {
            let index = PyDict::new(py);
            for (i, key) in self.keys_of(py).into_iter().enumerate() {
                index.set_item(key, i)?;
            }
            Ok(index.unbind())
        })?;
        index
            .bind(py)
            .get_item(key)?
            .map(|i| i.extract())
            .transpose()
    }
}
