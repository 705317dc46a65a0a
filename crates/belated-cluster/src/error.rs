//! The one error type of the worker runtime; `belated-py` maps it to Python exceptions once.

/// What can go wrong with a worker process, or with a task because of one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The operating system refused to start it (no such interpreter, out of processes, ...).
    #[error("could not start a worker process: {0}")]
    Spawn(#[source] std::io::Error),
    /// It started but did not say it was ready: it died, or hung, while importing.
    #[error("a worker process did not start: {0}; its errors are printed above")]
    NotReady(String),
    /// It died (or was killed) while the parent talked to it.
    #[error("its worker process died")]
    Lost,
    /// Its cluster was closed: no worker is started or replaced any more.
    #[error("the cluster is closed")]
    Closed,
    /// More workers were asked for than the cluster has room for.
    #[error("the cluster has room for at most {0} workers")]
    Full(usize),
    /// The computation was cancelled (its workers killed) while the task waited or ran.
    #[error("the computation was cancelled")]
    Cancelled,
    /// Inputs of the task were lost with the worker process that held them, and it ran outside an
    /// engine that would recompute them.
    #[error("its inputs were lost with the worker process that held them")]
    InputsLost,
    /// The task's worker died every time it was tried.
    #[error(
        "failed after {tries} tries: its worker process died; the last time, {why}. A task that \
         kills its process (os._exit, a crash, running out of memory) fails again when retried; \
         raise retries= for failures that come and go"
    )]
    TaskLost {
        /// How many times it was tried.
        tries: usize,
        /// How its worker ended the last time.
        why: String,
    },
}
