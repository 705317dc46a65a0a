//! `belated.get`: running a dask graph, read into engine tasks by [`crate::dask_graph`], on belated's
//! threads (or inline on a worker thread), with dask's callbacks, `num_workers` and `timeout`. Apart from
//! the reading, so that the argument collector, which reads dask collections too, stays below
//! `compute`.

use std::sync::Arc;

use belated_core::{current_worker, on_worker_thread, run_inline, Graph, Runner, TaskId};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::compute::{run_on_threads, worker_count, MeasuredRamp};
use crate::errors::{catch_panics, to_python};
use crate::gil::offer_between_tasks;
use crate::host::{call_task, CallsBack, Deadline};
use crate::task::{Call, PyValue};

use crate::dask_graph::{cull, follow_priorities, Body, Culled, DaskTask, Slot};

struct DaskRunner {
    tasks: Arc<[DaskTask]>,
    /// `pretask(key)` and `posttask(key, value, worker_id)`, when callbacks listen.
    pretask: Option<Py<PyAny>>,
    posttask: Option<Py<PyAny>>,
    /// Ended when the run returns, for the caller finishes its callbacks then.
    calls: Arc<CallsBack>,
    deadline: Option<Deadline>,
    check_signals: bool,
    /// The caller's `contextvars` context when it holds any variable: each task runs in a copy of it,
    /// as in dask's threaded scheduler (one context cannot be entered by two threads at once).
    context: Option<Py<PyAny>>,
    /// `None` inline, where one thread runs everything anyway.
    ramp: Option<MeasuredRamp>,
}

impl DaskRunner {
    /// `callable(*args, **kwargs)`, inside a copy of the caller's context if there is one.
    fn call<'py>(
        &self,
        callable: &Bound<'py, PyAny>,
        args: impl IntoIterator<Item = Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = callable.py();
        let kwargs = kwargs.cloned();
        // Through Call::run: a thread left in a timed-out task may be ended inside it at exit.
        match &self.context {
            None => Call {
                func: callable.clone(),
                args: PyTuple::new(py, args.into_iter().collect::<Vec<_>>())?,
                kwargs,
            },
            Some(context) => {
                let copy = context.bind(py).call_method0(intern!(py, "copy"))?;
                let args: Vec<_> = std::iter::once(callable.clone()).chain(args).collect();
                Call {
                    func: copy.getattr(intern!(py, "run"))?,
                    args: PyTuple::new(py, args)?,
                    kwargs,
                }
            }
        }
        .run()
    }
}

impl Runner for DaskRunner {
    type Value = PyValue;
    type Error = PyErr;

    fn run(&self, task: TaskId, inputs: &[PyValue]) -> PyResult<PyValue> {
        let started = self.ramp.as_ref().map_or(0, MeasuredRamp::task_started);
        let value = Python::attach(|py| call_task(py, || self.run_attached(py, task, inputs)));
        if let Some(ramp) = &self.ramp {
            ramp.task_done(started);
        }
        value
    }

    fn concurrency(&self) -> usize {
        self.ramp.as_ref().map_or(usize::MAX, MeasuredRamp::allowed)
    }

    fn poll(&self) -> bool {
        self.ramp.as_ref().is_some_and(MeasuredRamp::poll)
    }
}

impl DaskRunner {
    /// One task, on a thread attached to the interpreter (a pool's worker stays attached for its
    /// life, so this attach only counts).
    fn run_attached(&self, py: Python<'_>, task: TaskId, inputs: &[PyValue]) -> PyResult<PyValue> {
        // A task that is a builtin runs no bytecode, so nothing else would hand the
        // interpreter to a thread waiting for it (a heartbeat, a progress bar).
        offer_between_tasks(py)?;
        if self.check_signals {
            py.check_signals()?;
        }
        Deadline::check(self.deadline)?;
        let task = &self.tasks[task.index()];
        if let Some(pretask) = &self.pretask {
            if let Some(_calling) = self.calls.begin() {
                pretask.call1(py, (&task.key,))?;
            }
        }
        let input = |i: usize| inputs[i].0.bind(py);
        let value = match &task.body {
            Body::Data(value) => value.clone_ref(py),
            Body::Alias(i) => input(*i).clone().unbind(),
            Body::Call { func, args, kwargs } => {
                let arg = |slot: &Slot| match slot {
                    Slot::Literal(value) => value.bind(py).clone(),
                    Slot::Input(i) => input(*i).clone(),
                };
                let kwargs = if kwargs.is_empty() {
                    None
                } else {
                    let named = PyDict::new(py);
                    for (name, slot) in kwargs {
                        named.set_item(name, arg(slot))?;
                    }
                    Some(named)
                };
                self.call(func.bind(py), args.iter().map(arg), kwargs.as_ref())?
                    .unbind()
            }
            Body::Node(node) => {
                let values = PyDict::new(py);
                for (key, value) in task.deps.iter().zip(inputs) {
                    values.set_item(key, &value.0)?;
                }
                self.call(node.bind(py), [values.into_any()], None)?
                    .unbind()
            }
        };
        // Inline, this thread is the caller and nothing watches the limit while a task runs: a graph
        // whose last task ran past it would end as if in time.
        if self.check_signals {
            Deadline::check(self.deadline)?;
        }
        if let Some(posttask) = &self.posttask {
            if let Some(_calling) = self.calls.begin() {
                let worker = current_worker().map_or(-1, |w| w as i64);
                posttask.call1(py, (&task.key, &value, worker))?;
            }
        }
        Ok(PyValue(value))
    }
}

/// Runs the tasks of `dsk` (key -> `dask._task_spec` node) that `keys` need and returns the results of
/// `keys` in order. `priorities` (key -> dask.order priority) sets the order; without it the engine's
/// depth-first order is used. Tasks run in copies of `context` (a `contextvars.Context`) when given.
#[pyfunction]
#[pyo3(signature = (
    dsk, keys, priorities=None, num_workers=None, timeout=None, pretask=None, posttask=None, context=None
))]
#[allow(clippy::too_many_arguments)] // get's keyword arguments, as Python passes them
pub(crate) fn run_dask_graph(
    py: Python<'_>,
    dsk: &Bound<'_, PyDict>,
    keys: &Bound<'_, PyList>,
    priorities: Option<&Bound<'_, PyDict>>,
    num_workers: Option<i64>,
    timeout: Option<f64>,
    pretask: Option<Py<PyAny>>,
    posttask: Option<Py<PyAny>>,
    context: Option<Py<PyAny>>,
) -> PyResult<Vec<Py<PyAny>>> {
    let workers = worker_count(num_workers)?;
    let deadline = timeout.map(Deadline::after).transpose()?.flatten();
    catch_panics(|| {
        let mut culled = cull(dsk, keys)?;
        if let Some(priorities) = priorities {
            let priority = culled
                .tasks
                .iter()
                .map(|task| match priorities.get_item(&task.key)? {
                    Some(p) => p.extract::<i64>(),
                    None => Ok(i64::MAX),
                })
                .collect::<PyResult<Vec<i64>>>()?;
            culled = follow_priorities(culled, &priority);
        }
        let Culled {
            tasks,
            deps,
            outputs,
        } = culled;
        let graph = Graph::from_deps(deps.into_iter().map(|d| d.into_iter().map(TaskId)))
            .map_err(|e| to_python(py, e, |_| String::new()))?;
        let outputs: Vec<TaskId> = outputs.into_iter().map(TaskId).collect();
        let tasks: Arc<[DaskTask]> = tasks.into();
        let inline = on_worker_thread();
        let calls = Arc::new(CallsBack::default());
        let runner = DaskRunner {
            tasks: Arc::clone(&tasks),
            pretask,
            posttask,
            calls: Arc::clone(&calls),
            deadline,
            check_signals: inline,
            context,
            ramp: (!inline).then(|| MeasuredRamp::for_collections(workers)),
        };
        let result = if inline {
            run_inline(graph, outputs, runner)
        } else {
            let result = run_on_threads(py, workers, (graph, outputs), runner, deadline);
            // Tasks still running after a failure, a Ctrl-C or the time limit do not call back.
            calls.end(py);
            result?
        };
        let key_of = |task: TaskId| {
            tasks[task.index()]
                .key
                .bind(py)
                .repr()
                .map_or_else(|_| "?".into(), |r| r.to_string())
        };
        result
            .map(|values| values.into_iter().map(|v| v.0).collect())
            .map_err(|e| to_python(py, e, key_of))
    })
}
