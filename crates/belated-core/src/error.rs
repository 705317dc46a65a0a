use crate::TaskId;

/// Everything that can stop a computation. `E` is the error type of the [`crate::Runner`]: a task's own
/// failure is carried through untouched so the boundary can hand it back to the user as it was raised.
#[derive(Debug, thiserror::Error)]
pub enum Error<E> {
    #[error("task {task} failed")]
    Task { task: TaskId, error: E },
    #[error("task {task} panicked: {message}")]
    Panic { task: TaskId, message: String },
    #[error("the computation was cancelled before it finished")]
    Cancelled,
    #[error("could not start a worker thread ({0}); try a smaller num_workers")]
    Spawn(#[source] std::io::Error),
    #[error("the graph has {0} tasks, more than the {max} one computation can hold", max = u32::MAX)]
    TooLarge(usize),
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
}
