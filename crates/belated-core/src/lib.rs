//! The belated engine, in pure Rust.
//!
//! A user builds a graph one call at a time as immutable, reference-counted [`Node`]s; building is O(1)
//! per call and never merges graphs. To compute, [`Plan::flatten`] walks the part reachable from the
//! requested roots once and lays it out as a flat arena ([`Graph`]) with integer [`TaskId`]s in
//! depth-first post-order. That order doubles as the scheduling priority: [`Schedule`] always runs the
//! ready task with the smallest id, which finishes a branch before it starts the next one, and it
//! releases each intermediate result as soon as its last dependent has run.
//!
//! Execution is generic over a [`Runner`] (what a task does) and a [`ThreadHost`] (how a worker thread
//! lives in its environment, e.g. attached to a Python interpreter once for its whole life). The same
//! loop serves the calling thread ([`run_inline`]), a [`ThreadPool`], and a thread that helps with
//! a computation it waits for ([`JobHandle::help`]); an [`Observer`] sees every task start and finish,
//! on the thread that runs it. A runner may bound how many threads run its job as it goes
//! ([`Runner::concurrency`]), e.g. by measuring with a [`concurrency::Ramp`] whether more pay. A [`PoolRegistry`] shares pools between computations within bounds,
//! and a [`Session`] runs one computation on such a pool (or one of the caller's) and waits for it
//! with a deadline and an interrupt, as both fronts do.
//! A runner that finds a task's inputs lost after they were computed (with a worker process) says so,
//! and the [`Schedule`] steps back to recompute them ([`recovery`]).
//! A panic in user code (a task, a value's `Clone` or `Drop`, an observer) fails its computation with
//! [`Error::Panic`] and never costs a worker.

#![warn(missing_docs)]

pub mod concurrency;
mod error;
mod executor;
mod graph;
pub mod lineage;
mod node;
pub mod placement;
pub mod recovery;
mod registry;
mod schedule;
mod session;

pub use error::Error;
pub use executor::{
    current_worker, on_worker_thread, panic_message, run_inline, run_inline_each,
    run_inline_observed, CancelToken, EachOutput, Fanout, JobHandle, Observer, Outputs, PlainHost,
    Recoverable, Runner, Settled, ThreadHost, ThreadPool,
};
pub use graph::{Graph, Plan, StandIn, TaskId};
pub use node::{
    held_alone, release_paced, visit_held_alone, visit_needed, Node, Payload, RELEASE_STEP,
};
pub use recovery::{InputsLost, RetryErrors};
pub use registry::{kept_threads, PoolRegistry, KEPT_POOLS};
pub use schedule::Schedule;
pub use session::{Outcome, Session, Stopped, Wait};
