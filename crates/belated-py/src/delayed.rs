//! The `Delayed` type: a lazy value, the result of a node of the build-side graph, with what calling it
//! means ([`Role`]). Only the type and what reads it live here; its Python methods, and the calls,
//! operators and keys they build, are in [`crate::methods`], above the argument collector
//! ([`crate::collect`]) and tokens ([`crate::token`]), which both read a `Delayed`.

use std::sync::Arc;

use belated_core::{held_alone, visit_held_alone, Plan};
use pyo3::exceptions::PyAttributeError;
use pyo3::prelude::*;
use pyo3::pyclass::{PyTraverseError, PyVisit};
use pyo3::types::PyString;

use crate::errors::to_python;
use crate::gil;
use crate::task::{PyTask, TaskNode};

/// A lazy value: the result of a task that runs when computed. Its Python docstring is
/// `methods::CLASS_DOC`.
#[pyclass(module = "belated", name = "Delayed", frozen, generic)]
pub(crate) struct Delayed {
    node: Arc<TaskNode>,
    /// `nout`: the number of items, when known, which makes `len()` and unpacking work.
    length: Option<usize>,
    role: Role,
}

impl Drop for Delayed {
    /// A `Delayed` goes in its deallocation, with the interpreter held: letting go of the last handle on
    /// a million-call graph frees a million Python objects, so other threads get the interpreter
    /// between steps, as they would from Python code. A list of a million `Delayed` objects (the
    /// map of a map + reduce) frees them one by one, each a small release: they are paced together.
    fn drop(&mut self) {
        Python::attach(|py| {
            belated_core::release_paced(&mut self.node, || between_release_steps(py));
            gil::pace_dealloc(py);
        });
    }
}

/// How many nodes a traversal walks at most: the collector walks young values at every collection,
/// and the last value of a chain of a million calls holds the whole chain alone.
const TRAVERSE_WALK: usize = 64;

/// A request at least this large makes glibc's malloc consolidate its fastbins first.
const CONSOLIDATING_ALLOCATION: usize = 128 * 1024;

/// Between two steps of releasing a graph. Freed nodes pile up in glibc's fastbins, which it merges all
/// at once at its next large request: after a compute, a million of them made one 50–60 ms stop with
/// the interpreter held. A large request per step makes it merge a step's worth at a time.
fn between_release_steps(py: Python<'_>) {
    drop(std::hint::black_box(Vec::<u8>::with_capacity(
        CONSOLIDATING_ALLOCATION,
    )));
    gil::hand_over(py);
}

pub(crate) enum Role {
    /// Calling it calls the computed value.
    Value,
    /// `delayed(func)`: its node evaluates to the function; calling it builds a call of the function.
    Function {
        func: Py<PyAny>,
        options: CallOptions,
    },
    /// `obj.name`: its node computes the attribute; calling it builds a method call on `obj`.
    Attribute {
        obj: Arc<TaskNode>,
        name: Py<PyString>,
    },
}

#[derive(Clone, Copy)]
pub(crate) struct CallOptions {
    pub(crate) pure: Option<bool>,
    pub(crate) nout: Option<usize>,
}

impl Delayed {
    pub(crate) fn new(node: Arc<TaskNode>, length: Option<usize>, role: Role) -> Self {
        Delayed { node, length, role }
    }

    /// As a Python object, tracked by CPython's cycle collector only when its task or one it depends
    /// on holds an object that may be part of a reference cycle ([`crate::task::may_cycle`]): tracked,
    /// a graph of a million values made every full collection walk each one while the interpreter
    /// was held (pauses of 100–300 ms while building one, and a map's build 2.5 times slower).
    pub(crate) fn into_python(self, py: Python<'_>) -> PyResult<Bound<'_, Delayed>> {
        let may_cycle = self.node.payload().may_cycle()
            || matches!(&self.role, Role::Attribute { obj, .. } if obj.payload().may_cycle());
        let object = Bound::new(py, self)?;
        if !may_cycle {
            // SAFETY: `object` is a live object of a GC type; untracking is allowed at any time, and
            // its dealloc untracks only what is still tracked.
            unsafe { pyo3::ffi::PyObject_GC_UnTrack(object.as_ptr().cast()) };
        }
        Ok(object)
    }

    /// Shows CPython's cycle collector the Python objects this value holds alone, so that a cycle
    /// through it (`holder.result = delayed(f)(holder)`) is freed, as dask's is.
    ///
    /// The objects of a task are its node's, and a node is shared by every value, plan and running
    /// computation that holds a handle on it. Counting a shared object as this value's would let the
    /// collector decide that objects still in use elsewhere are garbage, and clear them. So a node's
    /// objects are shown only while this value holds the node alone ([`belated_core::held_alone`]),
    /// directly or through nodes it holds alone, within a bounded walk ([`visit_held_alone`]; a cycle
    /// through a node further down is not found).
    ///
    /// That walk relies on no node held alone gaining a handle during a collection, which runs with
    /// the interpreter held: a handle is made by cloning one, and those on a node held alone are this
    /// value's and its other nodes', reached only through this value, whose methods run attached to
    /// the interpreter. Threads running detached meanwhile (flattening a plan, engine threads) clone
    /// only the handles of plans and roots they were given, which hold their nodes themselves, so no
    /// value holds those alone; when they let go of them, values only come to hold more alone.
    ///
    /// There is no `__clear__`: a frozen value cannot let go of its node, and needs not. Values cannot
    /// reference each other in a cycle (a node only holds nodes made before it), so a cycle through one
    /// also runs through a mutable object that the collector clears, and the value goes with it.
    pub(crate) fn traverse(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let node_alone = held_alone(&self.node);
        let mut roots = [(&self.node, node_alone); 2];
        let mut held = 1;
        match &self.role {
            Role::Value => {}
            Role::Function { func, .. } => visit.call(func)?,
            Role::Attribute { obj, name } => {
                visit.call(name)?;
                // The object has two handles here: the role's, and the attribute's dependency.
                let in_node = match node_alone {
                    true => self
                        .node
                        .deps()
                        .iter()
                        .filter(|dep| Arc::ptr_eq(dep, obj))
                        .count(),
                    false => 0,
                };
                let obj_alone = Arc::weak_count(obj) == 0 && Arc::strong_count(obj) == 1 + in_node;
                roots[1] = (obj, obj_alone);
                held = 2;
            }
        }
        visit_held_alone::<_, _, TRAVERSE_WALK>(&roots[..held], |task| task.traverse(visit))
    }

    pub(crate) fn node(&self) -> &Arc<TaskNode> {
        &self.node
    }

    pub(crate) fn length(&self) -> Option<usize> {
        self.length
    }

    pub(crate) fn role(&self) -> &Role {
        &self.role
    }

    pub(crate) fn key(&self, py: Python<'_>) -> String {
        self.node.payload().key_string(py)
    }

    /// The key as dask has it: a string, or the tuple it was named with.
    pub(crate) fn key_object<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        let payload = self.node.payload();
        payload.key.to_object(py, payload)
    }

    /// The function of a `delayed(func)`.
    pub(crate) fn function<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        match &self.role {
            Role::Function { func, .. } => Some(func.bind(py).clone()),
            _ => None,
        }
    }

    /// The same value, called as `role` says.
    pub(crate) fn with_role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// The graph this value needs, flattened: its node, and for an attribute the object it is read on.
    pub(crate) fn plan(&self, py: Python<'_>) -> PyResult<Plan<PyTask>> {
        let mut roots = vec![Arc::clone(&self.node)];
        if let Role::Attribute { obj, .. } = &self.role {
            roots.push(Arc::clone(obj));
        }
        Plan::flatten(&roots).map_err(|e| to_python(py, e, |_| String::new()))
    }

    pub(crate) fn forwarded(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        match self.function(py) {
            Some(func) => Ok(func.getattr(name)?.unbind()),
            None => Err(PyAttributeError::new_err(format!(
                "Attribute {name} not found"
            ))),
        }
    }
}
