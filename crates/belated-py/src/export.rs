//! The graph as Python data: `Delayed.dask` (dask's key → task mapping, for people and tools that read
//! it) and pickling (a flat list of tasks, so a chain of a million calls pickles without recursion).

use std::sync::Arc;

use belated_core::{Plan, TaskId};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::delayed::{CallOptions, Delayed, Role};
use crate::errors::to_python;
use crate::task::{Arg, Collector, Construct, Key, Keywords, Op, PyTask, TaskNode};

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

fn plan(py: Python<'_>, delayed: &Delayed) -> PyResult<Plan<PyTask>> {
    let mut roots = vec![Arc::clone(delayed.node())];
    if let Role::Attribute { obj, .. } = delayed.role() {
        roots.push(Arc::clone(obj));
    }
    Plan::flatten(&roots).map_err(|e| to_python(py, e, |_| String::new()))
}

fn module_function<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(cell.import(py, "belated._belated", name)?.clone())
}

pub(crate) fn legacy_graph<'py>(
    py: Python<'py>,
    delayed: &Delayed,
) -> PyResult<Bound<'py, PyDict>> {
    Ok(LegacyGraph::new(py, &plan(py, delayed)?)?.tasks)
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

pub(crate) fn reduce<'py>(
    slf: &Bound<'py, Delayed>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
    let py = slf.py();
    let this = slf.get();
    let plan = plan(py, this)?;
    let tasks = PyList::empty(py);
    for (task, node) in plan.graph.tasks().zip(&plan.nodes) {
        let deps = plan.graph.deps(task);
        let payload = node.payload();
        let after: Vec<usize> = payload
            .op
            .unread_deps(deps.len())
            .into_iter()
            .map(|i| deps[i].index())
            .collect();
        tasks.append((
            payload.key.to_object(py, payload),
            encode_op(py, &payload.op, deps)?,
            after,
        ))?;
    }
    let role = match this.role() {
        Role::Value => py.None().into_bound(py),
        Role::Function { options, .. } => {
            ("function", options.pure, options.nout, options.traverse).into_bound_py_any(py)?
        }
        Role::Attribute { name, .. } => ("attribute", name.bind(py)).into_bound_py_any(py)?,
    };
    let outputs: Vec<usize> = plan.outputs.iter().map(|t| t.index()).collect();
    static REBUILD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let rebuild = module_function(py, &REBUILD, "rebuild")?;
    Ok((
        rebuild,
        PyTuple::new(
            py,
            [
                tasks.into_any(),
                outputs.into_bound_py_any(py)?,
                this.length().into_bound_py_any(py)?,
                role,
            ],
        )?,
    ))
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

// Pickle encoding: small integer tags, dependencies as indices into the flat task list.
const VALUE: u8 = 0;
const DEP: u8 = 1;
const LIST: u8 = 2;
const TUPLE: u8 = 3;
const SET: u8 = 4;
const DICT: u8 = 5;
const CONSTRUCT: u8 = 6;
const OP_VALUE: u8 = 0;
const OP_CALL: u8 = 1;
const OP_METHOD: u8 = 2;

fn encode_op<'py>(py: Python<'py>, op: &Op, deps: &[TaskId]) -> PyResult<Bound<'py, PyAny>> {
    match op {
        Op::Value(arg) => (OP_VALUE, encode_arg(py, arg, deps)?).into_bound_py_any(py),
        Op::Call { func, args, kwargs } => (
            OP_CALL,
            encode_arg(py, func, deps)?,
            encode_args(py, args, deps)?,
            encode_keywords(py, kwargs, deps)?,
        )
            .into_bound_py_any(py),
        Op::Method {
            obj,
            name,
            args,
            kwargs,
        } => (
            OP_METHOD,
            name.bind(py),
            encode_arg(py, obj, deps)?,
            encode_args(py, args, deps)?,
            encode_keywords(py, kwargs, deps)?,
        )
            .into_bound_py_any(py),
    }
}

fn encode_args<'py>(
    py: Python<'py>,
    args: &[Arg],
    deps: &[TaskId],
) -> PyResult<Bound<'py, PyList>> {
    PyList::new(
        py,
        args.iter()
            .map(|a| encode_arg(py, a, deps))
            .collect::<PyResult<Vec<_>>>()?,
    )
}

fn encode_keywords<'py>(
    py: Python<'py>,
    kwargs: &Keywords,
    deps: &[TaskId],
) -> PyResult<Bound<'py, PyList>> {
    let pairs = kwargs
        .iter()
        .map(|(name, arg)| (name.bind(py), encode_arg(py, arg, deps)?).into_bound_py_any(py))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, pairs)
}

fn encode_arg<'py>(py: Python<'py>, arg: &Arg, deps: &[TaskId]) -> PyResult<Bound<'py, PyAny>> {
    match arg {
        Arg::Value(value) => (VALUE, value.bind(py)).into_bound_py_any(py),
        Arg::Dep(i) => (DEP, deps[*i as usize].index()).into_bound_py_any(py),
        Arg::List(items) => (LIST, encode_args(py, items, deps)?).into_bound_py_any(py),
        Arg::Tuple(items) => (TUPLE, encode_args(py, items, deps)?).into_bound_py_any(py),
        Arg::Set(items) => (SET, encode_args(py, items, deps)?).into_bound_py_any(py),
        Arg::Dict(pairs) => {
            let pairs = pairs
                .iter()
                .map(|(k, v)| {
                    (encode_arg(py, k, deps)?, encode_arg(py, v, deps)?).into_bound_py_any(py)
                })
                .collect::<PyResult<Vec<_>>>()?;
            (DICT, PyList::new(py, pairs)?).into_bound_py_any(py)
        }
        Arg::Construct(c) => (
            CONSTRUCT,
            c.ty.bind(py),
            encode_args(py, &c.args, deps)?,
            encode_keywords(py, &c.keywords, deps)?,
        )
            .into_bound_py_any(py),
    }
}

fn corrupt(what: &str) -> PyErr {
    PyValueError::new_err(format!("cannot unpickle a Delayed: {what}"))
}

/// Decodes templates of one task, re-collecting its dependencies from the tasks decoded before it.
struct Decoder<'a> {
    nodes: &'a [Arc<TaskNode>],
    collector: Collector,
}

impl Decoder<'_> {
    fn dep(&mut self, index: usize) -> PyResult<Arg> {
        let node = self
            .nodes
            .get(index)
            .ok_or_else(|| corrupt("a task refers to a later task"))?;
        Ok(self.collector.dep(Arc::clone(node)))
    }

    fn op(&mut self, op: &Bound<'_, PyAny>) -> PyResult<Op> {
        let tag: u8 = op.get_item(0)?.extract()?;
        Ok(match tag {
            OP_VALUE => Op::Value(self.arg(&op.get_item(1)?)?),
            OP_CALL => Op::Call {
                func: self.arg(&op.get_item(1)?)?,
                args: self.args(&op.get_item(2)?)?,
                kwargs: self.keywords(&op.get_item(3)?)?,
            },
            OP_METHOD => Op::Method {
                name: op.get_item(1)?.cast_into::<PyString>()?.unbind(),
                obj: self.arg(&op.get_item(2)?)?,
                args: self.args(&op.get_item(3)?)?,
                kwargs: self.keywords(&op.get_item(4)?)?,
            },
            other => return Err(corrupt(&format!("unknown operation tag {other}"))),
        })
    }

    fn args(&mut self, items: &Bound<'_, PyAny>) -> PyResult<Box<[Arg]>> {
        items.try_iter()?.map(|item| self.arg(&item?)).collect()
    }

    fn keywords(&mut self, items: &Bound<'_, PyAny>) -> PyResult<Keywords> {
        items
            .try_iter()?
            .map(|pair| {
                let (name, arg): (Bound<'_, PyString>, Bound<'_, PyAny>) = pair?.extract()?;
                Ok((name.unbind(), self.arg(&arg)?))
            })
            .collect()
    }

    fn arg(&mut self, arg: &Bound<'_, PyAny>) -> PyResult<Arg> {
        let tag: u8 = arg.get_item(0)?.extract()?;
        let body = arg.get_item(1)?;
        Ok(match tag {
            VALUE => Arg::Value(body.unbind()),
            DEP => self.dep(body.extract()?)?,
            LIST => Arg::List(self.args(&body)?),
            TUPLE => Arg::Tuple(self.args(&body)?),
            SET => Arg::Set(self.args(&body)?),
            DICT => Arg::Dict(
                body.try_iter()?
                    .map(|pair| {
                        let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair?.extract()?;
                        Ok((self.arg(&k)?, self.arg(&v)?))
                    })
                    .collect::<PyResult<_>>()?,
            ),
            CONSTRUCT => Arg::Construct(Box::new(Construct {
                ty: body.unbind(),
                args: self.args(&arg.get_item(2)?)?,
                keywords: self.keywords(&arg.get_item(3)?)?,
            })),
            other => return Err(corrupt(&format!("unknown argument tag {other}"))),
        })
    }
}

/// Rebuilds a pickled `Delayed`. Whatever the data, the result is a valid graph or a `ValueError`.
#[pyfunction]
pub(crate) fn rebuild(
    tasks: &Bound<'_, PyList>,
    outputs: Vec<usize>,
    length: Option<usize>,
    role: &Bound<'_, PyAny>,
) -> PyResult<Delayed> {
    decode(tasks, outputs, length, role).map_err(|error| {
        if error.is_instance_of::<PyValueError>(tasks.py()) {
            error
        } else {
            let wrapped = corrupt(&error.to_string());
            wrapped.set_cause(tasks.py(), Some(error));
            wrapped
        }
    })
}

fn decode(
    tasks: &Bound<'_, PyList>,
    outputs: Vec<usize>,
    length: Option<usize>,
    role: &Bound<'_, PyAny>,
) -> PyResult<Delayed> {
    let py = tasks.py();
    let mut nodes: Vec<Arc<TaskNode>> = Vec::with_capacity(tasks.len());
    for task in tasks.iter() {
        let (key, op, after): (Bound<'_, PyAny>, Bound<'_, PyAny>, Vec<usize>) = task.extract()?;
        let mut decoder = Decoder {
            nodes: &nodes,
            collector: Collector::new(false),
        };
        let op = decoder.op(&op)?;
        for index in after {
            decoder.dep(index)?;
        }
        let deps = decoder.collector.deps;
        nodes.push(TaskNode::new(
            PyTask {
                key: Key::given(&key)?,
                op,
            },
            deps,
        ));
    }
    let output = |i: usize| -> PyResult<Arc<TaskNode>> {
        outputs
            .get(i)
            .and_then(|&t| nodes.get(t))
            .cloned()
            .ok_or_else(|| corrupt("missing output"))
    };
    let node = output(0)?;
    let role = if role.is_none() {
        Role::Value
    } else {
        let kind: String = role.get_item(0)?.extract()?;
        match kind.as_str() {
            "function" => {
                let (_, pure, nout, traverse): (String, Option<bool>, Option<usize>, bool) =
                    role.extract()?;
                let func = match &node.payload().op {
                    Op::Value(Arg::Value(func)) if func.bind(py).is_callable() => {
                        func.clone_ref(py)
                    }
                    _ => return Err(corrupt("a delayed function whose task is not a callable")),
                };
                Role::Function {
                    func,
                    options: CallOptions {
                        pure,
                        nout,
                        traverse,
                    },
                }
            }
            "attribute" => Role::Attribute {
                obj: output(1)?,
                name: role.get_item(1)?.cast_into::<PyString>()?.unbind(),
            },
            other => return Err(corrupt(&format!("unknown role {other:?}"))),
        }
    };
    Ok(Delayed::new(node, length, role))
}
