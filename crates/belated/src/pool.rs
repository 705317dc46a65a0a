//! Thread pools: the shared ones behind [`Scheduler::Threads`](crate::Scheduler::Threads), and
//! [`ThreadPool`]s you own, built like rayon's `ThreadPoolBuilder`.
//!
//! Invariants:
//! - Shared pools live in one [`PoolRegistry`]: reused per size, few kept (see its policy), and one let
//!   go of ends with the last computation using it. A computation that times out lets go of its
//!   shared pool (`belated_core::Session`), so the next one of that size does not queue behind its
//!   tasks still running.
//! - An owned pool is never in the registry: its threads end when the last handle on it is dropped
//!   (a clone held by [`Options`](crate::Options) counts), and the drop joins them.

use std::borrow::Cow;
use std::sync::Arc;

use belated_core::{PlainHost, PoolRegistry, Session};

use crate::Error;

/// A pool of worker threads of your own. Computations run on it with
/// [`Options::pool`](crate::Options::pool); dropping the last handle stops its threads once their
/// current tasks end, and joins them. Cloning shares the pool.
///
/// ```
/// use belated::{Delayed, Options, ThreadPool};
///
/// let pool = ThreadPool::builder().num_threads(3).thread_name("io").build()?;
/// assert_eq!(pool.threads(), 3);
/// let x = Delayed::value(20i64) + 1;
/// assert_eq!(x.compute_with(&Options::new().pool(&pool))?, 21);
/// drop(pool); // its three threads are joined here
/// # Ok::<(), belated::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ThreadPool {
    pub(crate) inner: Arc<belated_core::ThreadPool>,
}

impl ThreadPool {
    /// A pool of `threads` threads (at least one), named `belated-pool-{i}`.
    pub fn new(threads: usize) -> Result<Self, Error> {
        Self::builder().num_threads(threads).build()
    }

    /// Options for a pool: how many threads, and their names.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder::default()
    }

    /// How many worker threads the pool runs.
    pub fn threads(&self) -> usize {
        self.inner.threads()
    }

    pub(crate) fn start(threads: usize, name: &str) -> Result<belated_core::ThreadPool, Error> {
        belated_core::ThreadPool::named(1, threads, Arc::new(PlainHost), name).map_err(Error::Spawn)
    }

    /// A session on the shared pool of `threads` threads.
    pub(crate) fn shared(threads: usize) -> Result<Session<'static, usize>, Error> {
        static SHARED: PoolRegistry<usize> = PoolRegistry::new();
        SHARED.session(threads, || Self::start(threads, "belated-worker"))
    }
}

/// Builds a [`ThreadPool`].
#[derive(Clone, Debug)]
pub struct ThreadPoolBuilder {
    threads: Option<usize>,
    name: Cow<'static, str>,
}

impl Default for ThreadPoolBuilder {
    fn default() -> Self {
        ThreadPoolBuilder {
            threads: None,
            name: Cow::Borrowed("belated-pool"),
        }
    }
}

impl ThreadPoolBuilder {
    /// How many threads (at least one); by default one per available core.
    pub fn num_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Names the threads `{name}-{i}`, as debuggers and `top -H` show them.
    pub fn thread_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Starts the pool's threads.
    pub fn build(self) -> Result<ThreadPool, Error> {
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Ok(ThreadPool {
            inner: Arc::new(ThreadPool::start(threads, &self.name)?),
        })
    }
}
