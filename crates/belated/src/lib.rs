//! dask.delayed's programming model in typed Rust, on the belated engine.
//!
//! Wrap a function with [`delayed`] and its calls return [`Delayed<T>`] values instead of running:
//! together they form a task graph, which [`Delayed::compute`] or [`compute`](compute()) runs in
//! parallel. Arguments may be plain values or other delayed values; arithmetic operators, [`Delayed::map`],
//! [`Delayed::zip`], `collect()` and `sum()` build tasks too.
//!
//! ```
//! use belated::{compute, delayed, Delayed};
//!
//! fn square(x: i64) -> i64 {
//!     x * x
//! }
//!
//! let x_sq = delayed(square).call(3);
//! let y_sq = delayed(square).call(4);
//! let res = &x_sq + &y_sq; // nothing has run yet
//! assert!(x_sq.key().starts_with("square-"));
//! assert_eq!(res.compute()?, 25);
//! assert_eq!(compute((&x_sq, &res))?, (9, 25));
//! # Ok::<(), belated::Error>(())
//! ```
//!
//! # Errors
//!
//! A computation returns a [`Result`]. A task that panics, or a fallible task
//! ([`DelayedFn::try_call`], [`Delayed::try_map`]) that returns `Err`, fails the computation with an
//! [`Error`] naming the task by its key; the panic is caught on the worker, which carries on. So is a
//! panic in a value's `Clone` or `Drop`, or in an [`Events`] listener: it is an [`Error::Panic`] for
//! the task concerned, wherever it happens, and `compute` never unwinds.
//!
//! A computation that fails, times out or is dropped cancels its [`CancelToken`]; a long task can
//! look at [`CancelToken::current`] and return early, so it does not keep a worker busy for nothing.
//!
//! ```
//! let parse = belated::delayed(|s: String| s.parse::<i32>()).named("parse");
//! assert_eq!(parse.try_call("42".to_string()).compute()?, 42);
//!
//! let err = parse.try_call("forty-two".to_string()).compute().unwrap_err();
//! assert!(err.to_string().starts_with("task parse-"), "{err}");
//!
//! let boom = belated::delayed(|x: i32| -> i32 { panic!("no {x} today") }).call(7);
//! let err = boom.compute().unwrap_err();
//! assert!(matches!(err, belated::Error::Panic { .. }));
//! assert!(err.to_string().contains("no 7 today"), "{err}");
//! # Ok::<(), belated::Error>(())
//! ```
//!
//! # Invariants
//!
//! - Building is lazy and cheap: a call allocates one node and runs no user code. Graphs are immutable,
//!   so they are acyclic by construction and can be computed any number of times.
//! - Types are checked when the graph is built. Inside the engine a result is an
//!   `Arc<dyn Any + Send + Sync>`, downcast only to the type its handle names; nothing is serialized.
//!   A value moves into the last task that takes it; only consumers that start before the last one
//!   get a clone, so a chain of maps over a big `Vec` never copies it. A task whose parameter is an
//!   `Arc<T>` shares a `Delayed<T>` instead, so readers never copy (see [`IntoArg`]). Values must be
//!   [`Data`]: `Clone + Send + Sync + 'static`. A value given with [`Delayed::value`] belongs to the
//!   graph (which can be computed again), so each use of it is a clone: make big data in a task
//!   instead, or wrap it in an `Arc`.
//! - Within one computation each task runs exactly once, however many requested values share it; the
//!   result of a task is dropped as soon as its last consumer has run.
//! - Keys (`square-3f2a9c0d5e1b7a46`) are the function's name and a token unique in the process. They
//!   identify tasks for people; tasks are never merged by key.
//!
//! This crate has no Python in its dependency tree; `belated-py` is the Python front end to the same
//! engine.

#![warn(missing_docs)]

mod args;
mod compute;
mod delayed;
mod error;
mod func;
mod ops;
mod pool;
mod task;
#[cfg(feature = "render")]
mod visualize;

pub use args::{Arg, IntoArg};
pub use compute::{compute, compute_all, Collection, Events, Options, Scheduler};
pub use delayed::Delayed;
pub use error::Error;
pub use func::{delayed, delayed_async, AsyncSignature, BlockOn, DelayedFn, ParkThread, Signature};
pub use pool::{ThreadPool, ThreadPoolBuilder};
pub use task::TaskError;

/// A cooperative stop signal a task can look at; see [`CancelToken::current`].
pub use belated_core::CancelToken;
#[cfg(feature = "render")]
pub use visualize::visualize;

/// The graph renderer behind [`Delayed::visualize`], for drawing with other options.
#[cfg(feature = "render")]
pub use belated_render as render;

/// What a value in a graph must be: shareable between threads, and cloneable because one result may
/// feed several tasks that each take it by value (all but the last get a clone).
pub trait Data: Clone + Send + Sync + 'static {}

impl<T: Clone + Send + Sync + 'static> Data for T {}
