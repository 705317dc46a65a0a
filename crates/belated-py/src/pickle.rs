//! Pickling a `Delayed`: a flat list of tasks (so a chain of a million calls pickles without
//! recursion), dependencies as indices into it, and [`rebuild`], which turns any such data into a valid
//! graph or a `ValueError`.

use std::sync::Arc;

use belated_core::TaskId;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyString, PyTuple};
use pyo3::IntoPyObjectExt;

use crate::collect::Collector;
use crate::delayed::{CallOptions, Delayed, Role};
use crate::export::module_function;
use crate::task::{Arg, Construct, Key, Keywords, Op, PyTask, TaskNode};

pub(crate) fn reduce<'py>(
    slf: &Bound<'py, Delayed>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyTuple>)> {
    let py = slf.py();
    let this = slf.get();
    let plan = this.plan(py)?;
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
            ("function", options.pure, options.nout).into_bound_py_any(py)?
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
        let task = PyTask::new(py, Key::given(&key)?, op, &deps);
        nodes.push(TaskNode::new(task, deps));
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
                let (_, pure, nout): (String, Option<bool>, Option<usize>) = role.extract()?;
                let func = match &node.payload().op {
                    Op::Value(Arg::Value(func)) if func.bind(py).is_callable() => {
                        func.clone_ref(py)
                    }
                    _ => return Err(corrupt("a delayed function whose task is not a callable")),
                };
                Role::Function {
                    func,
                    options: CallOptions { pure, nout },
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
