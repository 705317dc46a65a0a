//! Running a dask graph (`dask._task_spec` nodes keyed by dask keys) on the engine: `belated.get`.
//!
//! Only the tasks the wanted keys need become engine tasks, laid out in one flat arena. Ids, which the
//! engine's schedule uses as priorities, are either the engine's own depth-first post-order from the
//! wanted keys (a task's dependencies in the order its arguments name them, never in the order of the
//! set dask gives, which `PYTHONHASHSEED` changes) or, when the caller passes dask.order's priorities,
//! the topological order that follows them (Kahn's algorithm taking the smallest priority first, so an
//! order that is already topological is kept as it is). Results are released by the engine as soon as
//! no remaining task needs them.
//!
//! How a task runs ([`Body`]): the common nodes are read once, when the graph is culled, so running
//! them costs one Python call: a plain `Task` whose arguments are literals or references to other keys
//! (`TaskRef`s, or the `Alias`es dask's converter writes for a legacy task) calls its function
//! directly, a `DataNode` is its value and an `Alias` is its target's value. Every other node
//! (containers, subgraphs, subclasses) is called with its dependencies' values, as dask's own
//! schedulers do. Both give what `node(values)` gives.
//!
//! The same reading turns a dask collection found by `compute`, `persist` or a delayed call into task
//! nodes of belated's own graphs ([`collection_node`]): one node per dask task under its dask key, so
//! that a task two collections (or a collection and a `Delayed`) share is one task of the computation.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use pyo3::exceptions::{PyKeyError, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString};

use crate::delayed::{Delayed, Role};
use crate::errors::catch_panics;
use crate::task::{Arg, Key, Op, PyTask, TaskNode};

/// One dask task: its key, how it runs, and the keys of its dependencies in the engine's input order.
pub(crate) struct DaskTask {
    pub(crate) key: Py<PyAny>,
    pub(crate) body: Body,
    pub(crate) deps: Vec<Py<PyAny>>,
}

pub(crate) enum Body {
    /// `func(*args, **kwargs)`.
    Call {
        func: Py<PyAny>,
        args: Vec<Slot>,
        kwargs: Vec<(Py<PyAny>, Slot)>,
    },
    /// A value held in the graph.
    Data(Py<PyAny>),
    /// The value of the input at this position.
    Alias(usize),
    /// Any other node, called with a dict of its dependencies' values.
    Node(Py<PyAny>),
}

/// An argument of a direct call: a literal, or the value of the input at a position.
pub(crate) enum Slot {
    Literal(Py<PyAny>),
    Input(usize),
}

/// More direct references than this and a task goes through `node(values)`, which looks keys up by hash.
const DIRECT_REFS: usize = 16;

/// The classes of `dask._task_spec` whose instances are read directly.
struct Spec<'py> {
    task: Bound<'py, PyAny>,
    data: Bound<'py, PyAny>,
    alias: Bound<'py, PyAny>,
    task_ref: Bound<'py, PyAny>,
    graph_node: Bound<'py, PyAny>,
}

impl<'py> Spec<'py> {
    fn import(py: Python<'py>) -> PyResult<Self> {
        let module = py.import("dask._task_spec")?;
        Ok(Spec {
            task: module.getattr("Task")?,
            data: module.getattr("DataNode")?,
            alias: module.getattr("Alias")?,
            task_ref: module.getattr("TaskRef")?,
            graph_node: module.getattr("GraphNode")?,
        })
    }

    /// How `node` runs, and its dependencies in the order the engine visits them, which on one thread
    /// is the order tasks run in. `dependencies` is a set, whose order changes with `PYTHONHASHSEED`,
    /// so they come as the node's arguments name them (as a `Delayed` call's inputs do).
    fn read(&self, node: &Bound<'py, PyAny>) -> PyResult<(Body, Vec<Bound<'py, PyAny>>)> {
        let py = node.py();
        let class = node.get_type().into_any();
        if class.is(&self.task) {
            if let Some(call) = self.direct_call(node)? {
                return Ok(call);
            }
        }
        let deps = node
            .getattr(intern!(py, "dependencies"))?
            .try_iter()?
            .collect::<PyResult<Vec<_>>>()?;
        let deps = self.in_stable_order(node, deps)?;
        let body = if class.is(&self.data) {
            Body::Data(node.getattr(intern!(py, "value"))?.unbind())
        } else if class.is(&self.alias) && deps.len() == 1 {
            Body::Alias(0)
        } else {
            Body::Node(node.clone().unbind())
        };
        Ok((body, deps))
    }

    /// A plain `Task` whose arguments are literals or references to at most [`DIRECT_REFS`] keys
    /// (`TaskRef`s or `Alias`es), as a direct call of its function, with the keys in the order its arguments name them; None otherwise.
    fn direct_call(
        &self,
        node: &Bound<'py, PyAny>,
    ) -> PyResult<Option<(Body, Vec<Bound<'py, PyAny>>)>> {
        let py = node.py();
        let mut deps: Vec<Bound<'py, PyAny>> = Vec::new();
        let mut slot = |arg: Bound<'py, PyAny>| -> PyResult<Option<Slot>> {
            // dask's converter writes a legacy task's reference to a key as an `Alias` of it.
            let key = if arg.is_instance(&self.task_ref)? {
                Some(arg.getattr(intern!(py, "key"))?)
            } else if arg.get_type().is(&self.alias) {
                Some(arg.getattr(intern!(py, "target"))?)
            } else {
                None
            };
            if let Some(key) = key {
                for (i, dep) in deps.iter().enumerate() {
                    if dep.eq(&key)? {
                        return Ok(Some(Slot::Input(i)));
                    }
                }
                if deps.len() == DIRECT_REFS {
                    return Ok(None);
                }
                deps.push(key);
                return Ok(Some(Slot::Input(deps.len() - 1)));
            }
            if arg.is_instance(&self.graph_node)? {
                return Ok(None);
            }
            Ok(Some(Slot::Literal(arg.unbind())))
        };
        let mut args = Vec::new();
        for arg in node.getattr(intern!(py, "args"))?.try_iter()? {
            match slot(arg?)? {
                Some(s) => args.push(s),
                None => return Ok(None),
            }
        }
        let mut kwargs = Vec::new();
        let given = node.getattr(intern!(py, "kwargs"))?;
        for item in given.call_method0(intern!(py, "items"))?.try_iter()? {
            let (name, arg): (Bound<'py, PyAny>, Bound<'py, PyAny>) = item?.extract()?;
            match slot(arg)? {
                Some(s) => kwargs.push((name.unbind(), s)),
                None => return Ok(None),
            }
        }
        // Keys the task depends on other than through its arguments are not read here.
        if node.getattr(intern!(py, "dependencies"))?.len()? != deps.len() {
            return Ok(None);
        }
        let func = node.getattr(intern!(py, "func"))?.unbind();
        Ok(Some((Body::Call { func, args, kwargs }, deps)))
    }

    /// `deps` of a node that is not a direct call, in the order its arguments name them, nested
    /// containers included; any no argument names, after them by repr.
    fn in_stable_order(
        &self,
        node: &Bound<'py, PyAny>,
        deps: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyAny>>> {
        if deps.len() < 2 {
            return Ok(deps);
        }
        let py = node.py();
        let index = PyDict::new(py);
        for (i, dep) in deps.iter().enumerate() {
            index.set_item(dep, i)?;
        }
        let mut deps: Vec<Option<Bound<'py, PyAny>>> = deps.into_iter().map(Some).collect();
        let mut ordered = Vec::with_capacity(deps.len());
        // Arguments still to read, the next one last.
        let mut arguments = vec![node.clone()];
        while let Some(arg) = arguments.pop() {
            let named = if arg.is_instance(&self.task_ref)? {
                arg.getattr(intern!(py, "key"))?
            } else if arg.is_instance(&self.alias)? {
                arg.getattr(intern!(py, "target"))?
            } else {
                if arg.is_instance(&self.task)? {
                    let kwargs = arg.getattr(intern!(py, "kwargs"))?;
                    let values = kwargs.call_method0(intern!(py, "values"))?;
                    let args = arg.getattr(intern!(py, "args"))?;
                    let inner: Vec<_> = args
                        .try_iter()?
                        .chain(values.try_iter()?)
                        .collect::<PyResult<_>>()?;
                    arguments.extend(inner.into_iter().rev());
                }
                continue;
            };
            if let Some(i) = index.get_item(&named)? {
                ordered.extend(deps[i.extract::<usize>()?].take());
                if ordered.len() == deps.len() {
                    break;
                }
            }
        }
        let mut rest = deps
            .into_iter()
            .flatten()
            .map(|dep| Ok((dep.repr()?.to_string(), dep)))
            .collect::<PyResult<Vec<_>>>()?;
        rest.sort_by(|a, b| a.0.cmp(&b.0));
        ordered.extend(rest.into_iter().map(|(_, dep)| dep));
        Ok(ordered)
    }
}

impl Body {
    /// The same evaluation as a belated task's operation, whose dependency `i` is input `i`.
    fn into_op(self, py: Python<'_>, deps: &[Py<PyAny>]) -> PyResult<Op> {
        let arg = |slot: Slot| match slot {
            Slot::Literal(value) => Arg::Value(value),
            Slot::Input(i) => Arg::Dep(i as u32),
        };
        Ok(match self {
            Body::Data(value) => Op::Value(Arg::Value(value)),
            Body::Alias(i) => Op::Value(Arg::Dep(i as u32)),
            Body::Call { func, args, kwargs } => Op::Call {
                func: Arg::Value(func),
                args: args.into_iter().map(arg).collect(),
                kwargs: kwargs
                    .into_iter()
                    .map(|(name, slot)| {
                        Ok((
                            name.into_bound(py).cast_into::<PyString>()?.unbind(),
                            arg(slot),
                        ))
                    })
                    .collect::<PyResult<_>>()?,
            },
            // Called through a function of ours, with the node as an argument: belated's graphs exported
            // to dask (`__dask_graph__`) quote task objects carried as arguments, so dask does not take
            // the node's own inner keys for keys of the exported graph.
            Body::Node(node) => {
                static RUN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
                let run = RUN.import(py, "belated._dask", "run_graph_node")?;
                let keys = PyList::new(py, deps)?;
                let args = [Arg::Value(node), Arg::Value(keys.into_any().unbind())]
                    .into_iter()
                    .chain((0..deps.len()).map(|i| Arg::Dep(i as u32)));
                Op::Call {
                    func: Arg::Value(run.clone().unbind()),
                    args: args.collect(),
                    kwargs: Box::default(),
                }
            }
        })
    }
}

/// The tasks the wanted keys need, in a topological order.
pub(crate) struct Culled {
    pub(crate) tasks: Vec<DaskTask>,
    pub(crate) deps: Vec<Vec<u32>>,
    pub(crate) outputs: Vec<u32>,
}

/// Walks `dsk` from `keys` depth-first, numbering tasks in post-order. Iterative, so deep chains are fine.
///
/// A graph of `dask._task_spec` nodes (what dask's collections hand a scheduler) is read as it is; one
/// holding anything else (legacy tuples, raw values, keys naming keys) goes through dask's own converter
/// first. Converting every node up front, as dask's schedulers do, would cost as much as this walk.
pub(crate) fn cull(dsk: &Bound<'_, PyDict>, keys: &Bound<'_, PyList>) -> PyResult<Culled> {
    let py = dsk.py();
    let spec = Spec::import(py)?;
    if let Some(culled) = walk(&spec, dsk, keys)? {
        return Ok(culled);
    }
    static CONVERT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let converted = CONVERT
        .import(py, "dask._task_spec", "convert_legacy_graph")?
        .call1((dsk,))?
        .cast_into::<PyDict>()?;
    walk(&spec, &converted, keys)?.ok_or_else(|| {
        PyRuntimeError::new_err(
            "dask's convert_legacy_graph left a value that is not a task spec node",
        )
    })
}

/// A key being visited: how it runs, its dependencies, and the slots of those visited so far.
struct Visit<'py> {
    key: Bound<'py, PyAny>,
    body: Body,
    deps: Vec<Bound<'py, PyAny>>,
    dep_slots: Vec<usize>,
    slot: usize,
}

/// The walk of [`cull`], or None when it meets a value that is not a `dask._task_spec` node.
fn walk<'py>(
    spec: &Spec<'py>,
    dsk: &Bound<'py, PyDict>,
    keys: &Bound<'py, PyList>,
) -> PyResult<Option<Culled>> {
    let py = dsk.py();
    // key -> slot, given when the key is first met; a slot holds the key's id once its task is numbered,
    // None while its dependencies are being visited (meeting it then is a cycle). One hash lookup per
    // edge: the slots of a task's dependencies are kept as they are met.
    let slots = PyDict::new(py);
    let mut ids: Vec<Option<u32>> = Vec::new();
    let mut culled = Culled {
        tasks: Vec::new(),
        deps: Vec::new(),
        outputs: Vec::with_capacity(keys.len()),
    };
    let mut stack: Vec<Visit<'py>> = Vec::new();
    for root in keys.iter() {
        let root_slot = match slots.get_item(&root)? {
            Some(slot) => slot.extract::<usize>()?,
            None => {
                let Some(visit) = start_visit(spec, dsk, root, None, ids.len())? else {
                    return Ok(None);
                };
                slots.set_item(&visit.key, visit.slot)?;
                ids.push(None);
                let root_slot = visit.slot;
                stack.push(visit);
                while let Some(top) = stack.last_mut() {
                    let Some(dep) = top.deps.get(top.dep_slots.len()) else {
                        let done = stack.pop().expect("the loop saw a top");
                        let id = culled.tasks.len() as u32;
                        ids[done.slot] = Some(id);
                        culled.deps.push(
                            done.dep_slots
                                .iter()
                                .map(|&slot| ids[slot].expect("dependencies are numbered first"))
                                .collect(),
                        );
                        culled.tasks.push(DaskTask {
                            body: done.body,
                            key: done.key.unbind(),
                            deps: done.deps.into_iter().map(Bound::unbind).collect(),
                        });
                        continue;
                    };
                    if let Some(slot) = slots.get_item(dep)? {
                        let slot = slot.extract::<usize>()?;
                        if ids[slot].is_none() {
                            // RuntimeError, as dask's own schedulers raise for a cycle.
                            return Err(PyRuntimeError::new_err(format!(
                                "Cycle detected: the graph has a cycle through key {}",
                                dep.repr()?
                            )));
                        }
                        top.dep_slots.push(slot);
                        continue;
                    }
                    let slot = ids.len();
                    top.dep_slots.push(slot);
                    let (dep, parent) = (dep.clone(), top.key.clone());
                    let Some(visit) = start_visit(spec, dsk, dep, Some(parent), slot)? else {
                        return Ok(None);
                    };
                    slots.set_item(&visit.key, slot)?;
                    ids.push(None);
                    stack.push(visit);
                }
                root_slot
            }
        };
        culled
            .outputs
            .push(ids[root_slot].expect("a wanted key is numbered once visited"));
    }
    Ok(Some(culled))
}

/// A key's node and dependencies, ready to be visited; None when the node is not a task spec node.
fn start_visit<'py>(
    spec: &Spec<'py>,
    dsk: &Bound<'py, PyDict>,
    key: Bound<'py, PyAny>,
    parent: Option<Bound<'py, PyAny>>,
    slot: usize,
) -> PyResult<Option<Visit<'py>>> {
    let Some(node) = dsk.get_item(&key)? else {
        // dask's schedulers: a wanted key that is not there is a KeyError, a missing dependency a
        // ValueError, with dask's message.
        return Err(match parent {
            Some(parent) => PyValueError::new_err(format!(
                "Missing dependency {} for dependents {{{}}}",
                key.str()?,
                parent.repr()?
            )),
            None => PyKeyError::new_err(format!("{} is not in the graph", key.repr()?)),
        });
    };
    if !node.is_instance(&spec.graph_node)? {
        return Ok(None);
    }
    let (body, deps) = spec.read(&node)?;
    Ok(Some(Visit {
        key,
        body,
        dep_slots: Vec::with_capacity(deps.len()),
        deps,
        slot,
    }))
}

/// Renumbers `culled` so that ids follow `priority` (smaller first) wherever dependencies allow.
/// O(n log n) in tasks plus edges.
pub(crate) fn follow_priorities(culled: Culled, priority: &[i64]) -> Culled {
    let n = culled.tasks.len();
    let mut waiting: Vec<u32> = culled.deps.iter().map(|d| d.len() as u32).collect();
    let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
    for (task, deps) in culled.deps.iter().enumerate() {
        for &dep in deps {
            dependents[dep as usize].push(task as u32);
        }
    }
    let mut ready: BinaryHeap<Reverse<(i64, u32)>> = (0..n as u32)
        .filter(|&t| waiting[t as usize] == 0)
        .map(|t| Reverse((priority[t as usize], t)))
        .collect();
    let mut new_id = vec![0u32; n];
    let mut sequence = Vec::with_capacity(n);
    while let Some(Reverse((_, task))) = ready.pop() {
        new_id[task as usize] = sequence.len() as u32;
        sequence.push(task);
        for &dependent in &dependents[task as usize] {
            waiting[dependent as usize] -= 1;
            if waiting[dependent as usize] == 0 {
                ready.push(Reverse((priority[dependent as usize], dependent)));
            }
        }
    }
    let mut slots: Vec<Option<DaskTask>> = culled.tasks.into_iter().map(Some).collect();
    let mut deps = Vec::with_capacity(n);
    let mut tasks = Vec::with_capacity(n);
    for old in sequence {
        tasks.push(
            slots[old as usize]
                .take()
                .expect("each task is sequenced once"),
        );
        deps.push(
            culled.deps[old as usize]
                .iter()
                .map(|&d| new_id[d as usize])
                .collect(),
        );
    }
    Culled {
        tasks,
        deps,
        outputs: culled.outputs.iter().map(|&o| new_id[o as usize]).collect(),
    }
}

/// Task nodes computing `keys` of `dsk` (key -> `dask._task_spec` node), one per key, each under its
/// dask key.
fn task_nodes(dsk: &Bound<'_, PyDict>, keys: &Bound<'_, PyList>) -> PyResult<Vec<Arc<TaskNode>>> {
    let py = dsk.py();
    let Culled {
        tasks,
        deps,
        outputs,
    } = cull(dsk, keys)?;
    let mut nodes: Vec<Arc<TaskNode>> = Vec::with_capacity(tasks.len());
    for (task, deps) in tasks.into_iter().zip(deps) {
        let inputs: Vec<_> = deps
            .iter()
            .map(|&d| Arc::clone(&nodes[d as usize]))
            .collect();
        let task = PyTask::new(
            py,
            Key::given(task.key.bind(py))?,
            task.body.into_op(py, &task.deps)?,
            &inputs,
        );
        nodes.push(TaskNode::new(task, inputs));
    }
    Ok(outputs
        .into_iter()
        .map(|o| Arc::clone(&nodes[o as usize]))
        .collect())
}

/// The task node computing `key` of the dask graph `dsk`, under its dask key.
pub(crate) fn graph_node(
    dsk: &Bound<'_, PyDict>,
    key: &Bound<'_, PyAny>,
) -> PyResult<Arc<TaskNode>> {
    let mut nodes = task_nodes(dsk, &PyList::new(dsk.py(), [key])?)?;
    Ok(nodes.pop().expect("one node per key"))
}

/// A dask collection (array, dataframe, bag, dask.delayed …) as one task node of belated's graph: the
/// task of its optimized and finalized graph giving the value `dask.compute` would return for it.
pub(crate) fn collection_node(obj: &Bound<'_, PyAny>) -> PyResult<Arc<TaskNode>> {
    static GRAPH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = obj.py();
    let (dsk, key): (Bound<'_, PyDict>, Bound<'_, PyAny>) = GRAPH
        .import(py, "belated._dask", "collection_graph")?
        .call1((obj,))?
        .extract()?;
    graph_node(&dsk, &key)
}

/// The dask collections inside one call argument, each with its task node, their graphs optimized
/// together as dask optimizes the collections of one argument; empty when there are fewer than two.
pub(crate) fn collections_together<'py>(
    argument: &Bound<'py, PyAny>,
) -> PyResult<Vec<(Bound<'py, PyAny>, Arc<TaskNode>)>> {
    static GRAPH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = argument.py();
    let found = GRAPH
        .import(py, "belated._dask", "collections_in_argument")?
        .call1((argument,))?;
    if found.is_none() {
        return Ok(Vec::new());
    }
    let (collections, dsk, keys): (
        Vec<Bound<'py, PyAny>>,
        Bound<'py, PyDict>,
        Bound<'py, PyList>,
    ) = found.extract()?;
    let nodes = task_nodes(&dsk, &keys)?;
    Ok(collections.into_iter().zip(nodes).collect())
}

/// `Delayed` objects computing `keys` of the dask graph `dsk` (key -> `dask._task_spec` node), one per
/// key, under the same keys: how `belated.get` hands a dask graph to belated's other schedulers and how
/// `persist` computes a dask collection's keys.
#[pyfunction]
pub(crate) fn dask_graph_delayed(
    dsk: &Bound<'_, PyDict>,
    keys: &Bound<'_, PyList>,
) -> PyResult<Vec<Delayed>> {
    catch_panics(|| {
        Ok(task_nodes(dsk, keys)?
            .into_iter()
            .map(|node| Delayed::new(node, None, Role::Value))
            .collect())
    })
}
