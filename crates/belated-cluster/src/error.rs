//! The one error type of the worker runtime; `belated-py` maps it to Python exceptions once.

/// What can go wrong with a worker process.
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
}
