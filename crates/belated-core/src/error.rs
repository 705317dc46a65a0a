use crate::TaskId;

/// Everything that can stop a computation. `E` is the error type of the [`crate::Runner`]: a task's own
/// failure is carried through untouched so the boundary can hand it back to the user as it was raised.
#[derive(Debug, thiserror::Error)]
pub enum Error<E> {
    /// A task returned its own error.
    #[error("task {task} failed")]
    Task {
        /// The task that failed.
        task: TaskId,
        /// Its error, as the runner returned it.
        error: E,
    },
    /// User code panicked: a task, a value's `Clone` or `Drop`, or an observer told about the task.
    #[error("task {task} panicked: {message}")]
    Panic {
        /// The task concerned.
        task: TaskId,
        /// The panic's message.
        message: String,
    },
    /// A task's result was lost (with the worker process holding it) and recomputed as often as the
    /// runner allows ([`crate::Runner::recompute_limit`]), then lost again.
    #[error("the result of task {task} was lost {times} times, more than it may be recomputed")]
    LostTooOften {
        /// The task whose result kept being lost.
        task: TaskId,
        /// How many times it was lost.
        times: u32,
    },
    /// The computation was cancelled (or its result taken) before it finished.
    #[error("the computation was cancelled before it finished")]
    Cancelled,
    /// A worker thread could not be started.
    #[error("could not start a worker thread ({0}); try a smaller num_workers")]
    Spawn(#[source] std::io::Error),
    /// The graph has more tasks than a [`TaskId`] can number.
    #[error("the graph has {0} tasks, more than the {max} one computation can hold", max = u32::MAX)]
    TooLarge(usize),
    /// A graph given as dependency lists is not a DAG in id order.
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
}
