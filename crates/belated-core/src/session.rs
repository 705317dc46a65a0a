//! One computation submitted to a pool and waited for from the calling thread, the way both fronts
//! (the Python module and the Rust API) run one.
//!
//! Policy:
//! - The pool is one a [`PoolRegistry`] shares out by key ([`PoolRegistry::session`]), or one the
//!   caller owns ([`Session::own`]).
//! - The wait ends when the computation settles, when its deadline passes, or when the caller's
//!   interrupt (Ctrl-C, a cancel token), looked at every `poll`, says to stop. The calling thread
//!   blocks through a [`ThreadHost`], so a Python caller lets go of the interpreter meanwhile; it
//!   hands the job to the pool through it too ([`detached`]).
//! - Every `poll`, the runner may let more threads run ([`crate::Runner::poll`]): the waiting thread
//!   is the one that looks in while the pool's threads may all be stuck in tasks.
//! - A computation stopped early is cancelled (no more of its tasks start) and the registry's pool
//!   it ran on is let go of: its threads may be stuck in tasks nobody can stop, and the next
//!   computation of that key must not queue behind them. That pool ends when its last computation
//!   does; a pool the caller owns is left alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{
    EachOutput, Error, Graph, JobHandle, Observer, PoolRegistry, Runner, TaskId, ThreadHost,
    ThreadPool,
};

/// A pool for one computation, and the registry entry to let go of if the computation is stopped.
#[derive(Debug)]
pub struct Session<'a, K: PartialEq> {
    pool: Arc<ThreadPool>,
    shared_by: Option<(&'a PoolRegistry<K>, K)>,
}

/// What a session's run ends with: the computation's outputs (or why there are none), or how the
/// wait was stopped.
pub type Outcome<R, S> =
    Result<Result<Vec<<R as Runner>::Value>, Error<<R as Runner>::Error>>, Stopped<S>>;

/// How a wait ended early.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped<S> {
    /// The deadline passed.
    TimedOut,
    /// The caller's interrupt said to stop, with this.
    Interrupted(S),
}

/// How the calling thread waits: blocking through `host`, until `deadline`, looking at `interrupt`
/// every `poll`.
pub struct Wait<'a, S> {
    host: &'a dyn ThreadHost,
    deadline: Option<Instant>,
    interrupt: Option<(Duration, &'a mut dyn FnMut() -> Option<S>)>,
}

impl<S> std::fmt::Debug for Wait<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wait")
            .field("deadline", &self.deadline)
            .field("poll", &self.interrupt.as_ref().map(|(poll, _)| poll))
            .finish_non_exhaustive()
    }
}

impl<'a, S> Wait<'a, S> {
    /// Waits, blocking through `host`, until the computation settles.
    pub fn new(host: &'a dyn ThreadHost) -> Self {
        Wait {
            host,
            deadline: None,
            interrupt: None,
        }
    }

    /// Stops at `deadline`, if any.
    pub fn deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Calls `interrupt` every `poll` while waiting, and stops when it returns something.
    pub fn interrupt(
        mut self,
        poll: Duration,
        interrupt: &'a mut dyn FnMut() -> Option<S>,
    ) -> Self {
        self.interrupt = Some((poll, interrupt));
        self
    }
}

impl<K: PartialEq> PoolRegistry<K> {
    /// A session on the pool kept for `key`, started by `start` if there is none.
    pub fn session<E>(
        &self,
        key: K,
        start: impl FnOnce() -> Result<ThreadPool, E>,
    ) -> Result<Session<'_, K>, E>
    where
        K: Clone,
    {
        let pool = self.get(key.clone(), start)?;
        Ok(Session {
            pool,
            shared_by: Some((self, key)),
        })
    }
}

impl<K: PartialEq> Session<'static, K> {
    /// A session on a pool of the caller's own, which no registry shares.
    pub fn own(pool: Arc<ThreadPool>) -> Self {
        Session {
            pool,
            shared_by: None,
        }
    }
}

/// Submits a job through the host's `block`: scheduling a graph of a million tasks takes 10 to 40 ms
/// and needs no interpreter, which a Python caller would otherwise keep from every other thread.
fn detached<T: Send>(host: &dyn ThreadHost, submit: impl FnOnce() -> T + Send) -> T {
    let mut submit = Some(submit);
    let mut submitted = None;
    host.block(&mut || submitted = submit.take().map(|submit| submit()));
    submitted.expect("a host's block runs the closure it is given")
}

impl<K: PartialEq> Session<'_, K> {
    /// The pool.
    pub fn pool(&self) -> &Arc<ThreadPool> {
        &self.pool
    }

    /// Runs `runner` over `graph` on the pool and waits as `wait` says: the outputs (or why there
    /// are none), or how the wait was stopped.
    pub fn run<R: Runner, S>(
        self,
        (graph, outputs): (Graph, Vec<TaskId>),
        runner: R,
        observer: Option<Arc<dyn Observer>>,
        wait: Wait<'_, S>,
    ) -> Outcome<R, S> {
        let pool = &self.pool;
        let handle = detached(wait.host, || {
            pool.submit_observed(graph, outputs, runner, observer)
        });
        self.wait(handle, wait, JobHandle::result)
    }

    /// [`Session::run`], keeping going past failures (see [`ThreadPool::submit_each`]): each output's
    /// value or the failure that stopped it.
    pub fn run_each<R: Runner, S>(
        self,
        (graph, outputs): (Graph, Vec<TaskId>),
        runner: R,
        observer: Option<Arc<dyn Observer>>,
        wait: Wait<'_, S>,
    ) -> Result<EachOutput<R>, Stopped<S>> {
        let pool = &self.pool;
        let handle = detached(wait.host, || {
            pool.submit_each(graph, outputs, runner, observer)
        });
        self.wait(handle, wait, JobHandle::outputs)
    }

    fn wait<R: Runner, S, T>(
        self,
        handle: JobHandle<R>,
        wait: Wait<'_, S>,
        take: impl FnOnce(JobHandle<R>) -> T,
    ) -> Result<T, Stopped<S>> {
        let Wait {
            host,
            deadline,
            mut interrupt,
        } = wait;
        loop {
            let now = Instant::now();
            let until_deadline = deadline.map(|at| at.saturating_duration_since(now));
            let step = match (&interrupt, until_deadline) {
                (Some((poll, _)), Some(left)) => (*poll).min(left),
                (Some((poll, _)), None) => *poll,
                (None, Some(left)) => left,
                (None, None) => Duration::MAX,
            };
            let mut settled = false;
            host.block(&mut || {
                settled = handle.wait_timeout(step);
                // Detached from the host here: the job's lock is then never awaited by a thread
                // holding the interpreter that a worker under that lock would wait for.
                if !settled {
                    handle.poll();
                }
            });
            if settled {
                return Ok(take(handle));
            }
            let stopped = match interrupt.as_mut().and_then(|(_, interrupt)| interrupt()) {
                Some(why) => Some(Stopped::Interrupted(why)),
                None if deadline.is_some_and(|at| Instant::now() >= at) => Some(Stopped::TimedOut),
                None => None,
            };
            if let Some(stopped) = stopped {
                handle.cancel();
                if let Some((registry, key)) = &self.shared_by {
                    registry.let_go_of(key, &self.pool);
                }
                return Err(stopped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;
    use crate::{CancelToken, PlainHost};

    /// Each task waits for a message (or its computation's cancellation), then returns its id.
    struct Gated(parking_lot::Mutex<mpsc::Receiver<()>>);

    impl Runner for Gated {
        type Value = u32;
        type Error = ();

        fn run(&self, task: TaskId, _inputs: &[u32]) -> Result<u32, ()> {
            let token = CancelToken::current().expect("on a pool thread");
            while !token.is_cancelled() {
                if self.0.lock().recv_timeout(Duration::from_millis(5)).is_ok() {
                    return Ok(task.0);
                }
            }
            Err(())
        }
    }

    fn plan(tasks: u32) -> (Graph, Vec<TaskId>) {
        let graph = Graph::from_deps::<(), _, _>((0..tasks).map(|_| Vec::new())).unwrap();
        (graph, (0..tasks).map(TaskId).collect())
    }

    fn start() -> std::io::Result<ThreadPool> {
        ThreadPool::new(1, Arc::new(PlainHost))
    }

    #[test]
    fn a_computation_that_settles_returns_its_outputs_and_keeps_its_pool() {
        let registry = PoolRegistry::new();
        let session = registry.session(1, start).unwrap();
        let pool = Arc::clone(session.pool());
        let (send, receive) = mpsc::channel();
        for _ in 0..2 {
            send.send(()).unwrap();
        }
        let mut never = || None::<()>;
        let wait = Wait::new(&PlainHost).interrupt(Duration::from_millis(1), &mut never);
        let outputs = session.run(plan(2), Gated(receive.into()), None, wait);
        assert!(matches!(outputs, Ok(Ok(ref values)) if values == &[0, 1]));
        assert!(Arc::ptr_eq(
            &pool,
            registry.session(1, start).unwrap().pool()
        ));
    }

    #[test]
    fn an_interrupted_computation_is_cancelled_and_its_shared_pool_let_go_of() {
        let registry = PoolRegistry::new();
        let session = registry.session(1, start).unwrap();
        let pool = Arc::clone(session.pool());
        let (_send, receive) = mpsc::channel();
        let mut polls = 0;
        let mut third_poll = || {
            polls += 1;
            (polls == 3).then_some("stop")
        };
        let wait = Wait::new(&PlainHost).interrupt(Duration::from_millis(1), &mut third_poll);
        let stopped = session.run(plan(1), Gated(receive.into()), None, wait);
        assert!(matches!(stopped, Err(Stopped::Interrupted("stop"))));
        assert_eq!(polls, 3);
        assert_eq!(registry.kept().0, 0, "let go of");
        let next = registry.session(1, start).unwrap();
        assert!(
            !Arc::ptr_eq(&pool, next.pool()),
            "the next computation gets a new pool"
        );
    }

    #[test]
    fn a_computation_past_its_deadline_times_out_and_a_pool_of_ones_own_is_kept() {
        let pool = Arc::new(start().unwrap());
        let session = Session::<usize>::own(Arc::clone(&pool));
        let (_send, receive) = mpsc::channel();
        let wait = Wait::<()>::new(&PlainHost).deadline(Some(Instant::now()));
        let stopped = session.run(plan(1), Gated(receive.into()), None, wait);
        assert!(matches!(stopped, Err(Stopped::TimedOut)));
        assert_eq!(Arc::strong_count(&pool), 1, "only the caller holds it");
        // The cancelled task ended, so the pool runs the next computation.
        let (send, receive) = mpsc::channel();
        send.send(()).unwrap();
        let outputs = Session::<usize>::own(Arc::clone(&pool)).run(
            plan(1),
            Gated(receive.into()),
            None,
            Wait::<()>::new(&PlainHost),
        );
        assert!(matches!(outputs, Ok(Ok(ref values)) if values == &[0]));
    }

    #[test]
    fn letting_go_of_a_key_spares_a_newer_pool_kept_for_it() {
        let registry = PoolRegistry::new();
        let old = registry.get(1, start).unwrap();
        registry.let_go(&1);
        let new = registry.get(1, start).unwrap();
        registry.let_go_of(&1, &old);
        assert!(Arc::ptr_eq(&new, &registry.get(1, start).unwrap()));
    }
}
