//! The one place where engine errors become Python exceptions.

use belated_core::{Error, TaskId};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

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
create_exception!(
    belated,
    CancelledError,
    BelatedError,
    "The computation was cancelled before it finished."
);
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
        Error::Lost => WorkerLostError::new_err(message),
        Error::Closed => BelatedError::new_err(message),
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
            // errors (a timeout noticed between tasks) need none, and a type that refuses notes is
            // passed on without one.
            if !error.is_instance_of::<BelatedError>(py) {
                let _ = error
                    .value(py)
                    .call_method1("add_note", (format!("raised by belated task {}", key_of(task)),));
            }
            error
        }
        Error::Panic { task, message } => InternalError::new_err(format!(
            "belated failed while running task {}: {message}. This is a bug in belated, not in your code; \
             please report it with this message.",
            key_of(task)
        )),
        Error::Cancelled => CancelledError::new_err("the computation was cancelled before it finished"),
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
