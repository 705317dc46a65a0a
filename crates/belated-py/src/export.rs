//! The graph in dask's legacy spec (key → task tuple or literal, dependencies named by key): what
//! `Delayed.dask` and `__dask_graph__` show, and what other engines (`compute_with`) receive. Reads
//! only flattened plans of [`crate::task`] payloads; it knows nothing of `Delayed`.

use belated_core::Plan;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

use crate::task::{Arg, Keywords, Op, PyTask};

/// `func(*args, **kwargs)`: how `Delayed.dask` writes a call with keyword arguments.
#[pyfunction]
#[pyo3(signature = (func, args, kwargs=None))]
pub(crate) fn apply<'py>(
    func: &Bound<'py, PyAny>,
    args: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    func.call(
        args.try_iter()?
            .collect::<PyResult<Vec<_>>>()
            .and_then(|a| PyTuple::new(func.py(), a))?,
        kwargs,
    )
}

/// `obj.name(*args, **kwargs)`: how `Delayed.dask` writes a method call.
#[pyfunction]
#[pyo3(signature = (obj, name, args, kwargs=None))]
pub(crate) fn call_method<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
    args: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    apply(&obj.getattr(name)?, args, kwargs)
}

/// A function of the extension module (`belated._belated`), as the tasks written here name it.
pub(crate) fn module_function<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(cell.import(py, "belated._belated", name)?.clone())
}

/// A flattened plan in dask's legacy graph spec: key → task, and key → the keys it depends on.
pub(crate) struct LegacyGraph<'py> {
    pub(crate) keys: Vec<Bound<'py, PyAny>>,
    pub(crate) tasks: Bound<'py, PyDict>,
    pub(crate) dependencies: Bound<'py, PyDict>,
}

impl<'py> LegacyGraph<'py> {
    pub(crate) fn new(py: Python<'py>, plan: &Plan<PyTask>) -> PyResult<Self> {
        let keys: Vec<Bound<'py, PyAny>> = plan
            .nodes
            .iter()
            .map(|node| node.payload().key.to_object(py, node.payload()))
            .collect();
        let tasks = PyDict::new(py);
        let dependencies = PyDict::new(py);
        // Tasks are inserted in id order, which is topological: executors may submit them in order.
        for task in plan.graph.tasks() {
            let dep_keys: Vec<Bound<'py, PyAny>> = plan
                .graph
                .deps(task)
                .iter()
                .map(|d| keys[d.index()].clone())
                .collect();
            let key = &keys[task.index()];
            dependencies.set_item(key, PyList::new(py, &dep_keys)?)?;
            let legacy = Legacy { py, dep_keys };
            tasks.set_item(key, legacy.task(&plan.nodes[task.index()].payload().op)?)?;
        }
        Ok(LegacyGraph {
            keys,
            tasks,
            dependencies,
        })
    }
}

/// Writes one task in dask's legacy graph spec, given the keys of its dependencies in order.
pub(crate) struct Legacy<'py> {
    pub(crate) py: Python<'py>,
    pub(crate) dep_keys: Vec<Bound<'py, PyAny>>,
}

impl<'py> Legacy<'py> {
    /// The task, with the dependencies it only waits for (no argument reads them) written as
    /// `(after, task, *keys)`, so that dask keeps the order.
    fn task(&self, op: &Op) -> PyResult<Bound<'py, PyAny>> {
        let unread = op.unread_deps(self.dep_keys.len());
        let task = self.op(op)?;
        if unread.is_empty() {
            return Ok(task);
        }
        static AFTER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let mut items = vec![
            AFTER.import(self.py, "belated._dask", "after")?.clone(),
            task,
        ];
        items.extend(unread.iter().map(|&i| self.dep_keys[i].clone()));
        Ok(PyTuple::new(self.py, items)?.into_any())
    }

    pub(crate) fn op(&self, op: &Op) -> PyResult<Bound<'py, PyAny>> {
        let py = self.py;
        static APPLY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static CALL_METHOD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        static FUTURE_RESULT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        match op {
            Op::Value(arg) => self.arg(arg),
            // A value persisted on Dask distributed is written as its future, as dask writes it:
            // distributed then reads it where it is.
            Op::Call {
                func: Arg::Value(func),
                args,
                kwargs,
            } if kwargs.is_empty()
                && args.len() == 1
                && func.is(FUTURE_RESULT.import(py, "belated._dask", "future_result")?) =>
            {
                self.arg(&args[0])
            }
            Op::Call { func, args, kwargs } if kwargs.is_empty() => {
                let mut items = vec![self.arg(func)?];
                for arg in args.iter() {
                    items.push(self.arg(arg)?);
                }
                Ok(PyTuple::new(py, items)?.into_any())
            }
            Op::Call { func, args, kwargs } => Ok(PyTuple::new(
                py,
                [
                    module_function(py, &APPLY, "apply")?,
                    self.arg(func)?,
                    self.list(args)?,
                    self.dict(kwargs)?,
                ],
            )?
            .into_any()),
            Op::Method {
                obj,
                name,
                args,
                kwargs,
            } => Ok(PyTuple::new(
                py,
                [
                    module_function(py, &CALL_METHOD, "call_method")?,
                    self.arg(obj)?,
                    name.bind(py).clone().into_any(),
                    self.list(args)?,
                    self.dict(kwargs)?,
                ],
            )?
            .into_any()),
        }
    }

    fn list(&self, args: &[Arg]) -> PyResult<Bound<'py, PyAny>> {
        let items = args
            .iter()
            .map(|a| self.arg(a))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(self.py, items)?.into_any())
    }

    fn dict(&self, kwargs: &Keywords) -> PyResult<Bound<'py, PyAny>> {
        self.dict_of(
            kwargs
                .iter()
                .map(|(name, arg)| Ok([name.bind(self.py).clone().into_any(), self.arg(arg)?])),
        )
    }

    /// `(dict, [[key, value], ...])`, as dask's legacy spec writes a dict to build.
    fn dict_of(
        &self,
        pairs: impl Iterator<Item = PyResult<[Bound<'py, PyAny>; 2]>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let pairs = pairs
            .map(|pair| PyList::new(self.py, pair?))
            .collect::<PyResult<Vec<_>>>()?;
        self.constructor("dict", PyList::new(self.py, pairs)?.into_any())
    }

    fn constructor(&self, name: &str, items: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let builtin = self.py.import("builtins")?.getattr(name)?;
        Ok(PyTuple::new(self.py, [builtin, items])?.into_any())
    }

    fn arg(&self, arg: &Arg) -> PyResult<Bound<'py, PyAny>> {
        match arg {
            Arg::Value(value) => quoted(value.bind(self.py)),
            Arg::Dep(i) => Ok(self.dep_keys[*i as usize].clone().into_any()),
            Arg::List(items) => self.list(items),
            Arg::Tuple(items) => self.constructor("tuple", self.list(items)?),
            Arg::Set(items) => self.constructor("set", self.list(items)?),
            Arg::Dict(pairs) => {
                self.dict_of(pairs.iter().map(|(k, v)| Ok([self.arg(k)?, self.arg(v)?])))
            }
            Arg::Construct(c) => {
                static APPLY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
                Ok(PyTuple::new(
                    self.py,
                    [
                        module_function(self.py, &APPLY, "apply")?,
                        c.ty.bind(self.py).clone(),
                        self.list(&c.args)?,
                        self.dict(&c.keywords)?,
                    ],
                )?
                .into_any())
            }
        }
    }
}

/// A literal as dask's legacy spec must see it: lists and tuples would be read as nested tasks or
/// key lists, strings as keys, dicts as holding tasks and keys, and dask's own task objects (a graph rebuilt from dask's optimizers
/// carries them as data) as tasks to run, so those are wrapped as `(Literal(value),)`, a task
/// returning them.
fn quoted<'py>(value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    use pyo3::types::PyTuple as Tuple;
    let ambiguous = value.is_instance_of::<Tuple>()
        || value.is_instance_of::<PyList>()
        || value.is_instance_of::<PyString>()
        || value.is_instance_of::<PyDict>()
        || is_dask_task(value)?;
    if !ambiguous {
        return Ok(value.clone());
    }
    static LITERAL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let literal = LITERAL
        .import(value.py(), "belated._dask", "Literal")?
        .call1((value,))?;
    Ok(Tuple::new(value.py(), [literal])?.into_any())
}

/// Whether `value` is one of dask's task objects (`dask._task_spec.GraphNode`). None can exist before
/// dask has loaded that module, so nothing is imported to find out.
fn is_dask_task(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    static GRAPH_NODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = value.py();
    let graph_node = match GRAPH_NODE.get(py) {
        Some(class) => class,
        None => {
            let modules = py.import("sys")?.getattr("modules")?;
            let Ok(spec) = modules.get_item("dask._task_spec") else {
                return Ok(false);
            };
            let class = spec.getattr("GraphNode")?.unbind();
            GRAPH_NODE.get_or_init(py, || class)
        }
    };
    value.is_instance(graph_node.bind(py))
}
