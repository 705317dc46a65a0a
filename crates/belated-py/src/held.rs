//! The keys of a graph whose results a Client holds already, found by the engine's walk of the graph
//! rather than by building its dask graph in Python.

use std::sync::Arc;

use belated_core::{visit_needed, Payload};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};
use rustc_hash::FxHashSet;

use crate::delayed::Delayed;
use crate::task::{Key, TaskNode};

/// A unique key's text: its function's name, a dash and a uuid of 36 characters.
const UUID_LENGTH: usize = 36;

/// The keys, as dask has them, of the tasks the graphs of `delayeds` need that are among the keys
/// `held` (an iterable, which must not change meanwhile), each once. Below a key found, nothing is
/// searched: its result stands for the tasks it needs, which a computation then does not run.
///
/// The held keys are read once, as the tasks' merge names, so that each task costs a lookup in a
/// set of strings, not a Python object and a call into the containers.
#[pyfunction]
pub(crate) fn held_keys<'py>(
    py: Python<'py>,
    delayeds: Vec<PyRef<'py, Delayed>>,
    held: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let mut held_names: FxHashSet<String> = FxHashSet::default();
    // The uuids the held string keys end with: a task of a unique key (which has no merge name) is
    // asked for its whole key, which takes Python, only when its uuid is among them.
    let mut uuids: FxHashSet<u128> = FxHashSet::default();
    for key in held.try_iter()? {
        let key = Key::given(&key?)?;
        if let Some(name) = key.merge_name() {
            if let Key::Named(text) = &key {
                if let Some(uuid) = uuid_suffix(text) {
                    uuids.insert(uuid);
                }
            }
            held_names.insert(name.to_owned());
        }
    }
    let roots: Vec<Arc<TaskNode>> = delayeds.iter().map(|d| Arc::clone(d.node())).collect();
    let found = PyList::empty(py);
    // A name met again is merged with the task met first, whose inputs are searched already.
    let mut names: FxHashSet<&str> = FxHashSet::default();
    visit_needed(&roots, |node| -> PyResult<bool> {
        let task = node.payload();
        let key = match task.merge_name() {
            Some(name) if !names.insert(name) => return Ok(false),
            Some(name) if held_names.contains(name) => task.key.to_object(py, task),
            Some(_) => return Ok(true),
            None => match task.key.unique_uuid() {
                Some(uuid) if uuids.contains(&uuid) => {
                    let text = task.key_string(py);
                    if !held_names.contains(&text) {
                        return Ok(true);
                    }
                    PyString::new(py, &text).into_any()
                }
                _ => return Ok(true),
            },
        };
        found.append(key)?;
        Ok(false)
    })?;
    Ok(found)
}

/// The bits of the uuid that a key of the shape of a unique key's text ends with.
fn uuid_suffix(text: &str) -> Option<u128> {
    let start = text.len().checked_sub(UUID_LENGTH + 1)?;
    let uuid = text.get(start..)?.strip_prefix('-')?;
    let digits: String = uuid.split('-').collect();
    let shaped = uuid.split('-').map(str::len).eq([8, 4, 4, 4, 12]);
    shaped
        .then(|| u128::from_str_radix(&digits, 16).ok())
        .flatten()
}
