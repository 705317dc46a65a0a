//! Computing delayed values: flatten what the requested values need into one plan and run it.
//!
//! Policy:
//! - One computation is one flat plan: values requested together share their common tasks, which run
//!   once (`compute((a, b))` with `a` and `b` both needing `x` runs `x` once).
//! - The default scheduler is a process-wide pool with one thread per available core, created on first
//!   use. [`Scheduler::Threads`] pools are reused per size, as dask's threaded scheduler does, so
//!   choosing a size per call does not spawn threads per call; but only a few are kept (the bounds of
//!   [`belated_core::PoolRegistry`]), and one let go of ends with its last computation. A
//!   [`ThreadPool`] of your own lives exactly as long as you hold it.
//! - The calling thread takes part in its own computation: it runs ready tasks beside the pool's
//!   workers and wakes them only when there is more ready work than it can take, so a small graph
//!   costs about what an inline run costs. It counts as one of the pool's threads: on the default
//!   pool, caller and workers together are one thread per core. With a timeout it only watches instead, so that it can
//!   return at the deadline, whatever the tasks do.
//! - A computation started from inside a task (on a pool thread) helps with its own tasks while it
//!   waits, beside any idle worker, so it neither runs serially nor deadlocks when every worker
//!   waits for a graph of its own; its timeout is checked between tasks.
//! - Results move out of the engine without a copy; a value requested twice in one computation is
//!   cloned for all but the last request. A panic in that `Clone` is an [`Error::Panic`] too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use belated_core::{
    on_worker_thread, panic_message, run_inline_observed, Observer, PlainHost, Plan, Runner,
    Session, TaskId, Wait,
};

use crate::pool::ThreadPool;
use crate::task::{NodeRef, TaskError, Value};
use crate::{Data, Delayed, Error};

mod sealed {
    use crate::task::{NodeRef, Value};

    /// The nodes a collection asks for, in order.
    #[derive(Debug, Default)]
    pub struct Roots(pub(crate) Vec<NodeRef>);

    /// The computed values of those nodes, in the same order.
    #[derive(Debug)]
    pub struct Values(pub(crate) std::vec::IntoIter<Value>);
}

use sealed::{Roots, Values};

/// What [`compute`] accepts: a [`Delayed<T>`] (owned or borrowed), and `Vec`s, slices and tuples (up to
/// 6) of collections, nested freely. The output has the same shape with every `Delayed<T>` replaced by
/// its `T`.
///
/// ```
/// use belated::{compute, Delayed};
/// let a = Delayed::value(1);
/// let bs = vec![Delayed::value(2.0), Delayed::value(3.0)];
/// let (x, ys) = compute((&a, &bs))?;
/// assert_eq!((x, ys), (1, vec![2.0, 3.0]));
/// # Ok::<(), belated::Error>(())
/// ```
pub trait Collection {
    /// The collection's shape with every `Delayed<T>` replaced by its `T`.
    type Output;
    #[doc(hidden)]
    fn add_roots(&self, roots: &mut Roots);
    #[doc(hidden)]
    fn take_output(&self, values: &mut Values) -> Result<Self::Output, Error>;
}

pub(crate) fn roots_of<C: Collection + ?Sized>(collection: &C) -> Vec<NodeRef> {
    let mut roots = Roots::default();
    collection.add_roots(&mut roots);
    roots.0
}

impl<T: Data> Collection for Delayed<T> {
    type Output = T;

    fn add_roots(&self, roots: &mut Roots) {
        roots.0.push(Arc::clone(&self.node));
    }

    fn take_output(&self, values: &mut Values) -> Result<T, Error> {
        let value = values
            .0
            .next()
            .ok_or_else(|| Error::Engine("internal error: fewer results than requested".into()))?;
        let value = value.downcast::<T>().map_err(|_| {
            Error::Engine(format!(
                "internal error: the result of {} is not a {}",
                self.key(),
                std::any::type_name::<T>()
            ))
        })?;
        // Shared only when the same value was requested twice; its `Clone` is user code.
        catch_unwind(AssertUnwindSafe(|| {
            Arc::try_unwrap(value).unwrap_or_else(|shared| T::clone(&shared))
        }))
        .map_err(|payload| Error::Panic {
            key: self.key(),
            message: panic_message(payload.as_ref()),
        })
    }
}

impl<C: Collection + ?Sized> Collection for &C {
    type Output = C::Output;

    fn add_roots(&self, roots: &mut Roots) {
        C::add_roots(self, roots)
    }

    fn take_output(&self, values: &mut Values) -> Result<Self::Output, Error> {
        C::take_output(self, values)
    }
}

impl<C: Collection> Collection for [C] {
    type Output = Vec<C::Output>;

    fn add_roots(&self, roots: &mut Roots) {
        roots.0.reserve(self.len());
        for item in self {
            item.add_roots(roots);
        }
    }

    fn take_output(&self, values: &mut Values) -> Result<Self::Output, Error> {
        self.iter().map(|item| item.take_output(values)).collect()
    }
}

impl<C: Collection> Collection for Vec<C> {
    type Output = Vec<C::Output>;

    fn add_roots(&self, roots: &mut Roots) {
        self.as_slice().add_roots(roots)
    }

    fn take_output(&self, values: &mut Values) -> Result<Self::Output, Error> {
        self.as_slice().take_output(values)
    }
}

macro_rules! tuples {
    ($( ($($C:ident $c:ident),+) )+) => {$(
        impl<$($C: Collection),+> Collection for ($($C,)+) {
            type Output = ($($C::Output,)+);

            fn add_roots(&self, roots: &mut Roots) {
                let ($($c,)+) = self;
                $($c.add_roots(roots);)+
            }

            fn take_output(&self, values: &mut Values) -> Result<Self::Output, Error> {
                let ($($c,)+) = self;
                Ok(($($c.take_output(values)?,)+))
            }
        }
    )+};
}

tuples! {
    (A a)
    (A a, B b)
    (A a, B b, C c)
    (A a, B b, C c, D d)
    (A a, B b, C c, D d, E e)
    (A a, B b, C c, D d, E e, F f)
}

/// Computes everything in `collection` together, on the default scheduler: shared tasks run once.
///
/// ```
/// use belated::{compute, delayed};
///
/// let total = delayed(|x: Vec<i64>| x.iter().filter(|i| *i % 2 == 0).sum::<i64>());
/// let count = delayed(|x: Vec<i64>| x.iter().filter(|i| *i % 2 == 0).count());
/// let data: Vec<Vec<i64>> = (0..10).map(|i| (i..i + 100).collect()).collect();
/// let totals: Vec<_> = data.iter().map(|x| total.call(x.clone())).collect();
/// let counts: Vec<_> = data.iter().map(|x| count.call(x.clone())).collect();
/// let (totals, counts) = compute((totals, counts))?;
/// assert_eq!(counts.iter().sum::<usize>(), 500);
/// # Ok::<(), belated::Error>(())
/// ```
pub fn compute<C: Collection>(collection: C) -> Result<C::Output, Error> {
    Options::default().compute(collection)
}

/// Computes a sequence of delayed values together; `compute_all(v)` is `compute(v)` for any iterable.
pub fn compute_all<T: Data>(values: impl IntoIterator<Item = Delayed<T>>) -> Result<Vec<T>, Error> {
    compute(values.into_iter().collect::<Vec<_>>())
}

impl<T: Data> Delayed<T> {
    /// Computes this value on the default scheduler (a pool with one thread per core).
    pub fn compute(&self) -> Result<T, Error> {
        Options::default().compute(self)
    }

    /// Computes this value with the given options.
    pub fn compute_with(&self, options: &Options) -> Result<T, Error> {
        options.compute(self)
    }
}

/// Where tasks run. A [`ThreadPool`] of your own is given with [`Options::pool`] instead.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheduler {
    /// The process-wide pool, one thread per available core (`std::thread::available_parallelism`).
    #[default]
    Global,
    /// On the calling thread, one task at a time (dask's `scheduler="sync"`): for debugging, and for
    /// graphs of tasks too small to be worth a thread hand-off.
    Inline,
    /// A pool of this many threads, shared by the computations that ask for this size and kept while
    /// it is among the few most recently used (see the module docs). More threads than cores pays off
    /// when tasks wait (sleep, I/O) rather than compute.
    Threads(usize),
}

/// How to compute: a builder over the scheduler and an optional timeout.
///
/// ```
/// use std::time::{Duration, Instant};
/// use belated::{Delayed, Options};
///
/// let x = Delayed::value(20i64) + 1;
/// assert_eq!(Options::inline().compute(&x)?, 21);
/// let options = Options::threads(4).timeout(Duration::from_secs(30));
/// assert_eq!(x.compute_with(&options)?, 21);
/// # Ok::<(), belated::Error>(())
/// ```
#[derive(Clone, Default)]
pub struct Options {
    scheduler: Scheduler,
    pool: Option<ThreadPool>,
    timeout: Option<Duration>,
    events: Option<Arc<dyn Events>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("scheduler", &self.scheduler)
            .field("pool", &self.pool)
            .field("timeout", &self.timeout)
            .field("events", &self.events.is_some())
            .finish()
    }
}

/// Hears every task start and finish, on the thread that runs it, for progress bars, profilers and
/// dashboards: the same events the Python front end's diagnostics receive. Keep it quick; it runs
/// between tasks. A panic in it fails the computation with [`Error::Panic`] for the task it was told
/// about; the worker carries on.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use belated::{delayed, Events, Options};
///
/// #[derive(Default)]
/// struct Count(AtomicUsize);
///
/// impl Events for Count {
///     fn task_finished(&self, _key: &str, _worker: Option<usize>, _succeeded: bool) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// let count = Arc::new(Count::default());
/// let total = delayed(|x: i64| x + 1).call(1) * 2;
/// assert_eq!(Options::new().events(count.clone()).compute(&total)?, 4);
/// assert_eq!(count.0.load(Ordering::Relaxed), 2);
/// # Ok::<(), belated::Error>(())
/// ```
pub trait Events: Send + Sync + 'static {
    /// The task `key` starts. `worker` is the pool thread's index, or `None` for the calling thread
    /// (an inline run, or a caller taking part in its computation).
    fn task_started(&self, key: &str, worker: Option<usize>) {
        let _ = (key, worker);
    }

    /// The task `key` ended: with a value (`succeeded`), or with an error or a panic.
    fn task_finished(&self, key: &str, worker: Option<usize>, succeeded: bool) {
        let _ = (key, worker, succeeded);
    }
}

/// Translates the engine's task ids into keys for an [`Events`] listener.
struct KeyedEvents {
    runner: Arc<TaskRunner>,
    events: Arc<dyn Events>,
}

impl Observer for KeyedEvents {
    fn task_started(&self, task: TaskId, worker: Option<usize>) {
        self.events
            .task_started(&self.runner.nodes[task.index()].payload().key(), worker);
    }

    fn task_finished(&self, task: TaskId, worker: Option<usize>, succeeded: bool) {
        self.events.task_finished(
            &self.runner.nodes[task.index()].payload().key(),
            worker,
            succeeded,
        );
    }
}

impl Options {
    /// The default options: the global pool, no timeout, no events.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs tasks on the calling thread.
    pub fn inline() -> Self {
        Self::new().scheduler(Scheduler::Inline)
    }

    /// Runs tasks on a shared pool of `threads` threads (see [`Scheduler::Threads`]).
    pub fn threads(threads: usize) -> Self {
        Self::new().scheduler(Scheduler::Threads(threads))
    }

    /// Where tasks run; replaces a [`Options::pool`] given before.
    pub fn scheduler(mut self, scheduler: Scheduler) -> Self {
        self.scheduler = scheduler;
        self.pool = None;
        self
    }

    /// Runs tasks on `pool`, a pool of your own; the options hold it (a clone of the handle) while
    /// they live.
    pub fn pool(mut self, pool: &ThreadPool) -> Self {
        self.pool = Some(pool.clone());
        self
    }

    /// Gives up after `timeout`, cancelling the computation (and its [`CancelToken`](crate::CancelToken)),
    /// with [`Error::Timeout`]. On a pool the caller returns at the deadline while running tasks finish
    /// in the background; an inline computation, or one started inside a task, runs tasks on the
    /// caller's thread, so it stops at the first task boundary after it. A timeout too long for the
    /// clock (`Duration::MAX`) means none.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Reports every task of the computations run with these options to `events`.
    pub fn events(mut self, events: Arc<dyn Events>) -> Self {
        self.events = Some(events);
        self
    }

    /// Computes everything in `collection` together; see [`compute`].
    pub fn compute<C: Collection>(&self, collection: C) -> Result<C::Output, Error> {
        let values = self.run(roots_of(&collection))?;
        collection.take_output(&mut Values(values.into_iter()))
    }

    fn run(&self, roots: Vec<NodeRef>) -> Result<Vec<Value>, Error> {
        let Plan {
            graph,
            nodes,
            outputs,
        } = Plan::flatten::<TaskError>(&roots).map_err(|e| Error::from_engine(e, &[]))?;
        let session = match (&self.pool, self.scheduler) {
            (Some(pool), _) => Some(Session::own(Arc::clone(&pool.inner))),
            (None, Scheduler::Inline) => None,
            (None, Scheduler::Global) => Some(Session::own(global_pool()?)),
            (None, Scheduler::Threads(threads)) => Some(ThreadPool::shared(threads.max(1))?),
        };
        let deadline = self
            .timeout
            .and_then(|timeout| Instant::now().checked_add(timeout));
        let timed_out = || Error::Timeout(self.timeout.unwrap_or_default());
        let runner = Arc::new(TaskRunner {
            nodes,
            // An inline run can only stop between tasks; a pool run is watched from outside.
            deadline: deadline.filter(|_| session.is_none()),
        });
        let observer = self.events.as_ref().map(|events| {
            Arc::new(KeyedEvents {
                runner: Arc::clone(&runner),
                events: Arc::clone(events),
            }) as Arc<dyn Observer>
        });
        let result = match session {
            None => run_inline_observed(graph, outputs, Arc::clone(&runner), observer),
            Some(session) if deadline.is_some() && !on_worker_thread() => {
                let wait = Wait::<()>::new(&PlainHost).deadline(deadline);
                return match session.run((graph, outputs), Arc::clone(&runner), observer, wait) {
                    Ok(result) => result.map_err(|e| Error::from_engine(e, &runner.nodes)),
                    Err(_) => Err(timed_out()),
                };
            }
            Some(session) => {
                let handle =
                    session
                        .pool()
                        .submit_helped(graph, outputs, Arc::clone(&runner), observer);
                if !handle.help(deadline) {
                    return Err(timed_out());
                }
                handle.result()
            }
        };
        result.map_err(|e| match e {
            belated_core::Error::Task { error, .. } if error.is::<DeadlinePassed>() => timed_out(),
            e => Error::from_engine(e, &runner.nodes),
        })
    }
}

/// The process-wide pool of one thread per core, started on first use and kept.
fn global_pool() -> Result<Arc<belated_core::ThreadPool>, Error> {
    static GLOBAL: OnceLock<Arc<belated_core::ThreadPool>> = OnceLock::new();
    if let Some(pool) = GLOBAL.get() {
        return Ok(Arc::clone(pool));
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pool = ThreadPool::start(threads, "belated-worker")?;
    Ok(Arc::clone(GLOBAL.get_or_init(|| Arc::new(pool))))
}

/// Runs task `i` of a plan by calling the body of the plan's `i`-th node.
struct TaskRunner {
    nodes: Vec<NodeRef>,
    /// When an inline computation with a timeout must stop starting tasks.
    deadline: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
#[error("the computation's deadline passed")]
struct DeadlinePassed;

impl Runner for TaskRunner {
    type Value = Value;
    type Error = TaskError;

    fn run(&self, task: TaskId, inputs: &[Value]) -> Result<Value, TaskError> {
        self.run_owned(task, &mut inputs.to_vec())
    }

    fn run_owned(&self, task: TaskId, inputs: &mut Vec<Value>) -> Result<Value, TaskError> {
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Err(Box::new(DeadlinePassed));
        }
        self.nodes[task.index()].payload().run(inputs)
    }
}
