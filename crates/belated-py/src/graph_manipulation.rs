//! dask's `graph_manipulation` in the engine: waiting is a dependency edge that carries no data (a
//! dependency no argument reads), and binding clones part of a graph under new keys.

use std::sync::Arc;

use belated_core::Plan;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use rustc_hash::FxHashSet;

use crate::collect::Collector;
use crate::delayed::{Delayed, Role};
use crate::errors::to_python;
use crate::task::{Key, Op, PyTask, TaskNode};

/// A `Delayed` named `name` computing `value` (a literal, or a structure holding `Delayed` objects)
/// that runs only after everything in `waits` has been computed, without reading it.
#[pyfunction]
#[pyo3(signature = (value, waits, name, nout=None))]
pub(crate) fn waiting(
    value: &Bound<'_, PyAny>,
    waits: &Bound<'_, PyTuple>,
    name: &Bound<'_, PyAny>,
    nout: Option<usize>,
) -> PyResult<Delayed> {
    let mut collector = Collector::new(true);
    let template = collector.arg(value)?;
    collector.args(waits)?;
    let task = PyTask::new(
        value.py(),
        Key::given(name)?,
        Op::Value(template),
        &collector.deps,
    );
    let node = TaskNode::new(task, collector.deps);
    Ok(Delayed::new(node, nout, Role::Value))
}

/// Copies of `children` whose tasks are new ones, under the keys `rename` gives, except the tasks of
/// `omit` (and what they depend on), which are shared. With a `blocker`, every copied task that
/// depends on no other copied task also waits for it.
#[pyfunction]
pub(crate) fn bind(
    py: Python<'_>,
    children: Vec<PyRef<'_, Delayed>>,
    blocker: Option<PyRef<'_, Delayed>>,
    omit: Vec<PyRef<'_, Delayed>>,
    rename: &Bound<'_, PyAny>,
) -> PyResult<Vec<Delayed>> {
    let flatten = |roots: &[Arc<TaskNode>]| {
        Plan::flatten(roots).map_err(|e| to_python(py, e, |_| String::new()))
    };
    let omitted = flatten(
        &omit
            .iter()
            .map(|d| Arc::clone(d.node()))
            .collect::<Vec<_>>(),
    )?;
    let omitted_nodes: FxHashSet<*const TaskNode> = omitted.nodes.iter().map(Arc::as_ptr).collect();
    let omitted_names: FxHashSet<&str> = omitted
        .nodes
        .iter()
        .filter_map(|node| belated_core::Payload::merge_name(node.payload()))
        .collect();
    let is_omitted = |node: &Arc<TaskNode>| {
        omitted_nodes.contains(&Arc::as_ptr(node))
            || belated_core::Payload::merge_name(node.payload())
                .is_some_and(|name| omitted_names.contains(name))
    };

    let mut roots: Vec<Arc<TaskNode>> = children.iter().map(|d| Arc::clone(d.node())).collect();
    for child in &children {
        if let Role::Attribute { obj, .. } = child.role() {
            roots.push(Arc::clone(obj));
        }
    }
    let plan = flatten(&roots)?;
    let mut copies: Vec<Arc<TaskNode>> = Vec::with_capacity(plan.nodes.len());
    let mut copied = vec![false; plan.nodes.len()];
    for (task, node) in plan.graph.tasks().zip(&plan.nodes) {
        if is_omitted(node) {
            copies.push(Arc::clone(node));
            continue;
        }
        let deps = plan.graph.deps(task);
        let mut new_deps: Vec<Arc<TaskNode>> = deps
            .iter()
            .map(|d| Arc::clone(&copies[d.index()]))
            .collect();
        if let Some(blocker) = &blocker {
            if !deps.iter().any(|d| copied[d.index()]) {
                new_deps.push(Arc::clone(blocker.node()));
            }
        }
        let payload = node.payload();
        let key = Key::given(&rename.call1((payload.key.to_object(py, payload),))?)?;
        let copy = PyTask::new(py, key, payload.op.clone_ref(py), &new_deps);
        copies.push(TaskNode::new(copy, new_deps));
        copied[task.index()] = true;
    }
    let mut attributes = plan.outputs[children.len()..].iter();
    children
        .iter()
        .zip(&plan.outputs)
        .map(|(child, output)| {
            // A copied `delayed(func)` is called as a value, so that its calls wait for the copy.
            let role = match child.role() {
                Role::Value | Role::Function { .. } => Role::Value,
                Role::Attribute { name, .. } => Role::Attribute {
                    obj: Arc::clone(
                        &copies[attributes
                            .next()
                            .expect("each attribute's object is a root")
                            .index()],
                    ),
                    name: name.clone_ref(py),
                },
            };
            Ok(Delayed::new(
                Arc::clone(&copies[output.index()]),
                child.length(),
                role,
            ))
        })
        .collect()
}
