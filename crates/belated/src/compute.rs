//! Computing delayed values: flatten what the requested values need into one plan and run it.
//!
//! Policy:
//! - One computation is one flat plan: values requested together share their common tasks, which run
//!   once (`compute((a, b))` with `a` and `b` both needing `x` runs `x` once).
//! - The default scheduler is a process-wide pool with one thread per available core, created on first
//!   use. [`Scheduler::Threads`] pools are likewise created once per size and reused, as dask's threaded
//!   scheduler does, so choosing a size per call does not spawn threads per call.
//! - A computation started from inside a task (a pool thread) runs inline on that thread: waiting for
//!   the pool it occupies could leave every worker waiting and nothing running.
//! - Results come out of the engine's shared values without a copy when nothing else holds them (the
//!   usual case); a value requested twice in one computation is cloned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use belated_core::{
    on_worker_thread, run_inline_observed, JobHandle, Observer, PlainHost, Plan, Runner, TaskId,
    ThreadPool,
};
use parking_lot::Mutex;

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
        Ok(Arc::try_unwrap(value).unwrap_or_else(|shared| T::clone(&shared)))
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

/// Where tasks run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scheduler {
    /// The process-wide pool, one thread per available core (`std::thread::available_parallelism`).
    #[default]
    Global,
    /// On the calling thread, one task at a time (dask's `scheduler="sync"`): for debugging, and for
    /// graphs of tasks too small to be worth a thread hand-off.
    Inline,
    /// A pool of this many threads, created on first use and kept for the process. More threads than
    /// cores pays off when tasks wait (sleep, I/O) rather than compute.
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
    timeout: Option<Duration>,
    events: Option<Arc<dyn Events>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("scheduler", &self.scheduler)
            .field("timeout", &self.timeout)
            .field("events", &self.events.is_some())
            .finish()
    }
}

/// Hears every task start and finish, on the thread that runs it, for progress bars, profilers and
/// dashboards: the same events the Python front end's diagnostics receive. Keep it quick; it runs
/// between tasks.
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
    /// `worker` is the pool thread's index, or `None` for an inline run on the calling thread.
    fn task_started(&self, key: &str, worker: Option<usize>) {
        let _ = (key, worker);
    }

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
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs tasks on the calling thread.
    pub fn inline() -> Self {
        Self::new().scheduler(Scheduler::Inline)
    }

    /// Runs tasks on a pool of `threads` threads.
    pub fn threads(threads: usize) -> Self {
        Self::new().scheduler(Scheduler::Threads(threads))
    }

    pub fn scheduler(mut self, scheduler: Scheduler) -> Self {
        self.scheduler = scheduler;
        self
    }

    /// Gives up after `timeout`, cancelling the computation, with [`Error::Timeout`]. On a pool the
    /// caller returns at the deadline while running tasks finish in the background; an inline
    /// computation runs on the caller's thread, so it stops at the first task boundary after it.
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
        let threads = match self.scheduler {
            _ if on_worker_thread() => None,
            Scheduler::Inline => None,
            Scheduler::Global => Some(default_threads()),
            Scheduler::Threads(threads) => Some(threads.max(1)),
        };
        // A pool is waited on with a timeout; an inline run can only check between tasks.
        let deadline = match (threads, self.timeout) {
            (None, Some(timeout)) => Some(Instant::now() + timeout),
            _ => None,
        };
        let runner = Arc::new(TaskRunner { nodes, deadline });
        let observer = self.events.as_ref().map(|events| {
            Arc::new(KeyedEvents {
                runner: Arc::clone(&runner),
                events: Arc::clone(events),
            }) as Arc<dyn Observer>
        });
        let result = match threads {
            None => run_inline_observed(graph, outputs, Arc::clone(&runner), observer),
            Some(threads) => {
                let handle =
                    pool(threads)?.submit_observed(graph, outputs, Arc::clone(&runner), observer);
                return self.wait(handle, &runner.nodes);
            }
        };
        result.map_err(|e| match e {
            belated_core::Error::Task { error, .. } if error.is::<DeadlinePassed>() => {
                Error::Timeout(self.timeout.unwrap_or_default())
            }
            e => Error::from_engine(e, &runner.nodes),
        })
    }

    fn wait(
        &self,
        handle: JobHandle<Arc<TaskRunner>>,
        nodes: &[NodeRef],
    ) -> Result<Vec<Value>, Error> {
        // `wait_timeout` needs a bound; without a timeout, wait in long slices until it settles.
        let slice = self.timeout.unwrap_or(Duration::from_secs(3600));
        while !handle.wait_timeout(slice) {
            if let Some(timeout) = self.timeout {
                handle.cancel();
                return Err(Error::Timeout(timeout));
            }
        }
        handle.result().map_err(|e| Error::from_engine(e, nodes))
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The pool of `threads` threads, started on first request and shared by every later one.
fn pool(threads: usize) -> Result<Arc<ThreadPool>, Error> {
    static POOLS: Mutex<Vec<(usize, Arc<ThreadPool>)>> = Mutex::new(Vec::new());
    let mut pools = POOLS.lock();
    if let Some((_, pool)) = pools.iter().find(|(size, _)| *size == threads) {
        return Ok(Arc::clone(pool));
    }
    let pool = Arc::new(ThreadPool::new(threads, Arc::new(PlainHost)).map_err(Error::Spawn)?);
    pools.push((threads, Arc::clone(&pool)));
    Ok(pool)
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
        if self
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Err(Box::new(DeadlinePassed));
        }
        self.nodes[task.index()].payload().run(inputs)
    }
}
