//! The one place where engine errors become Python exceptions, and where a Rust panic in a binding
//! becomes [`InternalError`] instead of PyO3's `PanicException`, a `BaseException` that
//! `except Exception` would miss.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use belated_core::{Error, TaskId};
use pyo3::create_exception;
use pyo3::exceptions::{PyBaseException, PyException};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};

create_exception!(
    belated,
    BelatedError,
    PyException,
    "Base class of the errors belated raises itself. A task's own exception reaches you unchanged."
);
create_exception!(
    belated,
    WorkerStartError,
    BelatedError,
    "The engine could not start its worker threads."
);
/// The computation was cancelled before it finished. It is a `concurrent.futures.CancelledError`
/// as well, as distributed's `CancelledError` is, so `except concurrent.futures.CancelledError`
/// written for distributed catches it; `create_exception!` takes one base, so the type is made here.
#[repr(transparent)]
pub struct CancelledError(PyAny);

pyo3::impl_exception_boilerplate!(CancelledError);
pyo3::pyobject_native_type_named!(CancelledError);

// SAFETY: the type object is an exception type made once by the interpreter and kept for good, so
// the pointer stays valid, and `CancelledError` is a transparent `PyAny` as a native type must be.
unsafe impl pyo3::type_object::PyTypeInfo for CancelledError {
    fn type_object_raw(py: Python<'_>) -> *mut pyo3::ffi::PyTypeObject {
        static TYPE_OBJECT: PyOnceLock<Py<PyType>> = PyOnceLock::new();
        TYPE_OBJECT
            .get_or_init(py, || {
                cancelled_error_type(py).expect("concurrent.futures is in the standard library")
            })
            .as_ptr()
            .cast()
    }
}

fn cancelled_error_type(py: Python<'_>) -> PyResult<Py<PyType>> {
    let futures = py.import("concurrent.futures")?.getattr("CancelledError")?;
    let bases = PyTuple::new(py, [py.get_type::<BelatedError>().into_any(), futures])?;
    let namespace = PyDict::new(py);
    namespace.set_item("__module__", "belated")?;
    namespace.set_item(
        "__doc__",
        "The computation was cancelled before it finished.",
    )?;
    let made = py
        .get_type::<PyType>()
        .call1(("CancelledError", bases, namespace))?;
    Ok(made.cast_into::<PyType>()?.unbind())
}
create_exception!(
    belated,
    ComputeTimeoutError,
    BelatedError,
    "The computation did not finish within its timeout and was cancelled."
);
create_exception!(
    belated,
    WorkerLostError,
    BelatedError,
    "A worker process died while running a task, more often than the retries allowed."
);
create_exception!(
    belated,
    RemoteError,
    BelatedError,
    "A task's exception that could not be sent back as itself (it cannot be pickled or rebuilt): its \
     type name (`type_name`), message and the worker's traceback (`traceback_text`)."
);
create_exception!(
    belated,
    InternalError,
    BelatedError,
    "A bug in belated itself, not in your tasks."
);

/// A worker runtime error as the exception it is to a user, `context` saying what failed.
pub(crate) fn cluster_error(error: belated_cluster::Error, context: &str) -> PyErr {
    use belated_cluster::Error;
    let message = format!("{context}: {error}");
    match error {
        Error::Spawn(_) | Error::NotReady(_) => WorkerStartError::new_err(message),
        Error::Lost | Error::TaskLost { .. } | Error::InputsLost => {
            WorkerLostError::new_err(message)
        }
        Error::Closed => BelatedError::new_err(message),
        Error::Full(_) => pyo3::exceptions::PyValueError::new_err(message),
        Error::Cancelled => CancelledError::new_err(message),
    }
}

pub(crate) fn to_python(
    py: Python<'_>,
    error: Error<PyErr>,
    key_of: impl Fn(TaskId) -> String,
) -> PyErr {
    match error {
        Error::Task { task, error } => {
            // The exception stays the user's own; the note only says which task raised it. Our own
            // errors (a timeout noticed between tasks) need none.
            if !error.is_instance_of::<BelatedError>(py) {
                add_note(py, &error, format!("raised by belated task {}", key_of(task)));
            }
            error
        }
        Error::Panic { task, message } => InternalError::new_err(format!(
            "belated failed while running task {}: {message}. This is a bug in belated, not in your code; \
             please report it with this message.",
            key_of(task)
        )),
        Error::Cancelled => CancelledError::new_err("the computation was cancelled before it finished"),
        Error::LostTooOften { task, times } => WorkerLostError::new_err(format!(
            "the result of task {} was lost {times} times with the worker processes holding it, and \
             recomputed each time but the last; raise retries= if workers die that often",
            key_of(task)
        )),
        Error::Spawn(e) => WorkerStartError::new_err(format!(
            "could not start worker threads ({e}); lower num_workers, e.g. \
             belated.config.set(num_workers=4), or use scheduler='sync'"
        )),
        Error::TooLarge(n) => BelatedError::new_err(format!(
            "the graph has {n} tasks, more than one computation can hold; compute it in parts"
        )),
        Error::InvalidGraph(message) => BelatedError::new_err(message),
    }
}

/// Adds `note` to a task's exception, as `BaseException.add_note` does. Python 3.10 has no `add_note`;
/// there the note goes into `__notes__` directly (what `add_note` does), which pytest and the
/// `exceptiongroup` backport display. An exception that refuses notes is passed on without one.
pub(crate) fn add_note(py: Python<'_>, error: &PyErr, note: String) {
    let value = error.value(py);
    // A persisted task raises its exception again under the same key: one note says it.
    let noted = value
        .getattr("__notes__")
        .and_then(|notes| notes.contains(&note))
        .unwrap_or(false);
    if noted {
        return;
    }
    let _ = if py.version_info() >= (3, 11) {
        value.call_method1("add_note", (note,)).map(drop)
    } else {
        append_note(value, note)
    };
}

fn append_note(value: &Bound<'_, PyBaseException>, note: String) -> PyResult<()> {
    let notes = match value.getattr("__notes__") {
        Ok(notes) => notes.cast_into::<PyList>()?,
        Err(_) => {
            let notes = PyList::empty(value.py());
            value.setattr("__notes__", &notes)?;
            notes
        }
    };
    notes.append(note)
}

/// Runs the body of a Python entry point, turning a panic inside it into [`InternalError`]. Entry points
/// that do real work (computing, drawing, the dashboard, exporting or pickling a graph) run through it;
/// a panic on a worker thread is caught by the engine and mapped by [`to_python`].
pub(crate) fn catch_panics<T>(body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    // Unwind safety: a panic ends the call, and the only state it leaves behind is behind locks that
    // recover (parking_lot) or in Python objects, which stay valid.
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| Err(internal_error(&*payload)))
}

fn internal_error(payload: &(dyn Any + Send)) -> PyErr {
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    InternalError::new_err(format!(
        "belated failed: {message}. This is a bug in belated, not in your code; please report it with \
         this message."
    ))
}

/// Panics inside the boundary: lets the tests check what a panic becomes in Python.
#[pyfunction]
pub(crate) fn panic_for_tests(message: &str) -> PyResult<()> {
    catch_panics(|| panic!("{message}"))
}
