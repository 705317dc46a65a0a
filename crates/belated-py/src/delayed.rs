//! The `Delayed` type: a lazy value, the result of a node of the build-side graph, with what calling it
//! means ([`Role`]). Only the type and what reads it live here; its Python methods, and the calls,
//! operators and keys they build, are in [`crate::methods`], above the argument collector
//! ([`crate::collect`]) and tokens ([`crate::token`]), which both read a `Delayed`.

use std::sync::Arc;

use belated_core::Plan;
use pyo3::exceptions::PyAttributeError;
use pyo3::prelude::*;
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
    pub(crate) traverse: bool,
}

impl Delayed {
    pub(crate) fn new(node: Arc<TaskNode>, length: Option<usize>, role: Role) -> Self {
        Delayed { node, length, role }
    }

    /// As a Python object that CPython's cycle collector does not track. Its traversal visits none of
    /// what it holds (the task, its function and arguments live in Rust), so the collector can never
    /// find a cycle through it; tracked, a graph of a million of them only made every full collection
    /// visit each one while the interpreter was held (pauses of 100–270 ms while building one).
    pub(crate) fn into_untracked(self, py: Python<'_>) -> PyResult<Bound<'_, Delayed>> {
        let object = Bound::new(py, self)?;
        // SAFETY: `object` is a live object of a GC type; untracking is allowed at any time, and its
        // dealloc untracks only what is still tracked.
        unsafe { pyo3::ffi::PyObject_GC_UnTrack(object.as_ptr().cast()) };
        Ok(object)
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
