use std::path::PathBuf;
use std::time::Duration;

use crate::task::{NodeRef, TaskError};

/// Why a computation (or a picture) produced no result. Task failures name the task by its key
/// (`square-3f2a…`), so the message points at the call that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A fallible task ([`try_call`](crate::DelayedFn), [`try_map`](crate::Delayed::try_map))
    /// returned an error; `source` is that error, which can be downcast to its own type.
    #[error("task {key} failed: {source}")]
    Task {
        /// The failing task's key.
        key: String,
        /// The task's error.
        source: TaskError,
    },
    /// User code panicked: a task, a value's `Clone` or `Drop`, or an [`Events`](crate::Events)
    /// listener told about the task. The panic was caught on the thread where it happened, which
    /// carries on; the pool is still usable.
    #[error("task {key} panicked: {message}")]
    Panic {
        /// The key of the task concerned.
        key: String,
        /// The panic's message.
        message: String,
    },
    /// The computation ran past [`Options::timeout`](crate::Options::timeout); it was cancelled, and
    /// tasks already running finish in the background with their results dropped.
    #[error("the computation did not finish within {0:?} and was cancelled")]
    Timeout(Duration),
    /// The computation was cancelled before it finished.
    #[error("the computation was cancelled before it finished")]
    Cancelled,
    /// Worker threads for a pool could not be started.
    #[error("could not start worker threads: {0}")]
    Spawn(#[source] std::io::Error),
    /// An engine failure this crate does not expect (e.g. more than `u32::MAX` tasks).
    #[error("{0}")]
    Engine(String),
    /// A picture could not be drawn.
    #[cfg(feature = "render")]
    #[error("could not draw the graph: {0}")]
    Render(#[from] belated_render::RenderError),
    /// A picture could not be written.
    #[error("could not write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why not.
        source: std::io::Error,
    },
}

impl Error {
    /// The key of the task that failed or panicked, if a task is to blame.
    pub fn key(&self) -> Option<&str> {
        match self {
            Error::Task { key, .. } | Error::Panic { key, .. } => Some(key),
            _ => None,
        }
    }

    /// Names the failing task of an engine error by the node behind its id.
    pub(crate) fn from_engine(error: belated_core::Error<TaskError>, nodes: &[NodeRef]) -> Self {
        use belated_core::Error as Core;
        let key = |task: belated_core::TaskId| nodes[task.index()].payload().key();
        match error {
            Core::Task { task, error } => Error::Task {
                key: key(task),
                source: error,
            },
            Core::Panic { task, message } => Error::Panic {
                key: key(task),
                message,
            },
            Core::Cancelled => Error::Cancelled,
            Core::Spawn(error) => Error::Spawn(error),
            other => Error::Engine(other.to_string()),
        }
    }
}
