//! The runner of computations on worker processes: a `belated_core::Runner` generic over how values
//! are encoded ([`Codec`]: Python values and cloudpickle in `belated-py`) and how workers are reached
//! ([`Transport`]: [`Workers`](crate::Workers) processes, or in-thread fakes in tests).
//!
//! Policy and invariants:
//! - A cluster of `n` workers of `t` threads runs on a `ThreadPool` of `n` placement groups of `t`
//!   threads; pool thread `s` drives connection `s % t` of worker `s / t`, so `t` is a hard limit on
//!   the tasks a worker runs at once. Connection `t` of each worker carries fetches and releases.
//! - Results stay in the worker that computed them; only outputs come back. A task is placed on the
//!   worker holding most of its inputs' bytes (`belated_core::placement`); an input held by another
//!   worker is fetched from it and the receiving worker keeps its copy for later tasks.
//! - A value built here of at least [`SEND_ONCE_BYTES`] is sent to each worker that needs it once;
//!   smaller ones travel inside every call that needs them. It is encoded once per computation
//!   ([`Sent::frames`]): its large buffers are shared-memory segments, which every worker that
//!   needs it maps rather than receiving a copy.
//! - A released result is forgotten by its workers with the next request they receive
//!   ([`Cluster::flush_releases`] sends those left at the end of a computation), or at once on a
//!   cluster that [releases promptly](Cluster::release_promptly), as distributed's scheduler does.
//! - A worker that dies is replaced. The task it was running is reported lost
//!   (`belated_core::InputsLost`, naming the inputs that died with the worker), and the engine's
//!   schedule runs it again as any task (observers, [`Codec::before`] and [`Codec::after`], deadlines and cancel see each
//!   run); once its worker died under it `retries` + 1 times it fails with [`Error::TaskLost`]. A
//!   task that finds inputs lost with a worker reports them instead of running; the schedule
//!   recomputes them, each a task like any other, at most `retries` + 1 times each, and runs the
//!   task again.
//! - While tasks are fast and many are ready, a pool thread takes several at once
//!   ([`crate::batching`] decides how many) and sends those whose inputs are all in the call or in
//!   its worker in one message; the worker runs them one after the other and replies to all at
//!   once, unless the batch runs past its overrun ([`Batching::overrun`]): then the worker sends
//!   the replies it has at once and hands back the calls it has not started, which the engine
//!   makes ready again for any thread, so quick calls never wait for a slow one batched with them
//!   while other workers idle. The results of a batch reach the engine as their replies come. A
//!   batch whose worker dies brought no result back for the calls it had not replied to, and which
//!   of them killed it is not known: each is reported lost and runs next on its own, with all its
//!   tries (so one that kills its worker runs once more than `retries` allows alone, and the others
//!   are not failed for it).
//! - A cancelled computation kills the workers running its tasks ([`Running::cancel`]); their
//!   replacements serve the next computation.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use std::time::Instant;

use belated_core::{
    current_worker, placement, Graph, InputsLost, Recoverable, RetryErrors, Runner, Settled, TaskId,
};
use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::batching::Batching;
use crate::directory::{Directory, Held, Kept, Sent, Source};
use crate::error::Error;
use crate::wire::{self, Frame, BATCH, FETCH, KEEP, RUN, SAME_FUNCTION, SEND};

/// Values built here of at least this many bytes are sent to a worker once and kept there; smaller
/// ones travel inside each call that needs them.
pub const SEND_ONCE_BYTES: u64 = 64 * 1024;

/// The worker processes as the runner reaches them: the only I/O it does.
pub trait Transport: Send + Sync + 'static {
    /// Where each value the workers keep lives, and each worker's generation.
    fn directory(&self) -> &Arc<Directory>;

    /// Sends `frames` to worker `worker`, if it is still at `generation`, on its connection
    /// `connection`, and waits for the reply; [`Error::Lost`] if that worker is gone.
    fn exchange(
        &self,
        worker: usize,
        generation: u64,
        connection: usize,
        frames: &[Frame],
    ) -> Result<Vec<Frame>, Error>;

    /// Waits for the next reply on connection `connection` of worker `worker`, if it is still at
    /// `generation`, whose last request is answered in several messages (a [`BATCH`] that overran).
    fn receive(
        &self,
        worker: usize,
        generation: u64,
        connection: usize,
    ) -> Result<Vec<Frame>, Error>;

    /// Kills worker `worker` if it is still at `generation`, with whatever it runs. Never waits.
    fn kill(&self, worker: usize, generation: u64);

    /// Whether worker `worker` at `generation` ended by [`Transport::kill`] (a cancel, maybe of
    /// another computation sharing the worker; a garbled reply), not by what a task did there: the
    /// other tasks that died with it are not at fault.
    fn killed(&self, worker: usize, generation: u64) -> bool;

    /// Replaces worker `worker` if it is still at `generation` (bumping its generation in the
    /// directory); returns how that one ended, also when another caller replaced it first.
    fn replace(&self, worker: usize, generation: u64) -> Result<String, Error>;
}

/// An input of a call as the codec sees it.
#[derive(Debug)]
pub enum Input<'a, V> {
    /// Here in the parent: it travels inside the call.
    Here(&'a V),
    /// Stored by the call's worker under this id.
    Stored(u64),
}

/// A task's call, encoded.
#[derive(Debug)]
pub enum Encoded<V> {
    /// Nothing to run remotely: the result, made here (a literal built of values here).
    Ready(V),
    /// The frames of the call to send.
    Call(Vec<Frame>),
}

/// The host language's side of the runner: its values and errors, how calls and replies are
/// encoded, and what runs around each task.
pub trait Codec: Send + Sync + 'static {
    /// A value in the parent.
    type Value: Clone + Send + Sync + 'static;
    /// A task's failure as the caller sees it.
    type Error: Send + 'static;

    /// `task`'s call on `inputs`. It may be [`Encoded::Ready`] only when every input is here. Its
    /// first frame names what it runs: a batch sends it once for the calls in a row that share it
    /// ([`wire::SAME_FUNCTION`]).
    fn encode_call(
        &self,
        task: TaskId,
        inputs: &[Input<'_, Self::Value>],
    ) -> Result<Encoded<Self::Value>, Self::Error>;

    /// `value` (an input of `task`) framed as a worker's reply to a fetch of it alone, which is how
    /// a call's worker receives values to store.
    fn encode_value(&self, task: TaskId, value: &Self::Value) -> Result<Vec<Frame>, Self::Error>;

    /// About how many bytes `value` holds.
    fn size(&self, value: &Self::Value) -> Result<u64, Self::Error>;

    /// A reply to a call whose result comes back: the result, or the task's own error.
    fn decode_value(&self, reply: &[Frame]) -> Result<Self::Value, Self::Error>;

    /// A worker's reply to a fetch of one value it keeps: the value.
    fn decode_fetched(&self, reply: &[Frame]) -> Result<Self::Value, Self::Error>;

    /// A reply to a call whose result stays in the worker: its size, or the task's own error.
    fn decode_size(&self, reply: &[Frame]) -> Result<u64, Self::Error>;

    /// The runtime's own failure of `task` as the caller's error.
    fn failed(&self, task: TaskId, error: Error) -> Self::Error;

    /// Runs `wait` (I/O that may block for long) so that other threads may use what the codec needs
    /// meanwhile: a Python codec lets go of the interpreter.
    fn blocking<T: Send>(&self, wait: impl FnOnce() -> T + Send) -> T {
        wait()
    }

    /// The result of `task` as an earlier computation left it in the workers (a persisted value),
    /// which this computation uses where it is instead of running the task; `None` to run it.
    fn kept(&self, task: TaskId) -> Option<Held<Self::Value>> {
        let _ = task;
        None
    }

    /// Called before each task runs, recomputed ones included: an error stops it (a deadline passed).
    fn before(&self, task: TaskId) -> Result<(), Self::Error> {
        let _ = task;
        Ok(())
    }

    /// Called after each task ran, with its result when it came back.
    fn after(&self, task: TaskId, value: Option<&Self::Value>) -> Result<(), Self::Error> {
        let _ = (task, value);
        Ok(())
    }

    /// Called with the result of a task that ran, which for a task given a kept result
    /// ([`Codec::kept`]) means that result was lost: later computations are to use this one rather
    /// than run the task again, each time with a new value if it is impure.
    fn ran(&self, task: TaskId, held: &Held<Self::Value>) -> Result<(), Self::Error> {
        let _ = (task, held);
        Ok(())
    }
}

/// What a cluster has done that a user may ask about.
#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) transferred: AtomicU64,
    uploaded: AtomicU64,
    recomputed: AtomicU64,
}

impl Stats {
    /// Values moved from one worker to another.
    pub fn transferred(&self) -> u64 {
        self.transferred.load(SeqCst)
    }

    /// Large values built here and sent to a worker to keep.
    pub fn uploaded(&self) -> u64 {
        self.uploaded.load(SeqCst)
    }

    /// Tasks that finished again because a worker holding their result was lost.
    pub fn recomputed(&self) -> u64 {
        self.recomputed.load(SeqCst)
    }
}

/// A cluster's workers as every computation on them shares them.
#[derive(Debug)]
pub struct Cluster<T> {
    transport: Arc<T>,
    threads_per_worker: usize,
    stats: Stats,
}

impl<T: Transport> Cluster<T> {
    /// The cluster of the workers behind `transport`, each serving `threads_per_worker` connections
    /// for tasks and one more for fetches.
    pub fn new(transport: Arc<T>, threads_per_worker: usize) -> Self {
        Cluster {
            transport,
            threads_per_worker,
            stats: Stats::default(),
        }
    }

    /// How many workers there are.
    pub fn workers(&self) -> usize {
        self.directory().workers()
    }

    /// How many tasks each worker runs at once.
    pub fn threads_per_worker(&self) -> usize {
        self.threads_per_worker
    }

    /// The workers.
    pub fn transport(&self) -> &Arc<T> {
        &self.transport
    }

    /// What the cluster has done.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn directory(&self) -> &Arc<Directory> {
        self.transport.directory()
    }

    /// The reply of `worker` at `generation` to a fetch of `ids` (with the releases waiting for it).
    pub(crate) fn fetch(
        &self,
        worker: usize,
        generation: u64,
        ids: &[u64],
    ) -> Result<Vec<Frame>, Error> {
        let releases = self.directory().take_releases(worker);
        let mut rest = Vec::with_capacity(ids.len() + 1);
        rest.push(ids.len() as u64);
        rest.extend_from_slice(ids);
        let header = wire::header(FETCH, &releases, &rest).into();
        self.transport
            .exchange(worker, generation, self.threads_per_worker, &[header])
    }

    /// The frames of `held`'s value as a fetch of it from a worker keeping it returns them (a list
    /// of one value); [`Error::Lost`] if every worker that held it was replaced.
    pub fn fetch_kept<V: Clone>(&self, held: &Held<V>) -> Result<Vec<Frame>, Error> {
        while let Some(copy) = held.kept_copy(self.directory()) {
            match self.fetch(copy.worker, copy.generation, &[copy.id]) {
                // The worker died: replaced, as a computation would, so that the directory counts
                // what it held as lost; another copy may be left.
                Err(Error::Lost) => {
                    self.transport.replace(copy.worker, copy.generation)?;
                }
                reply => return reply,
            }
        }
        Err(Error::Lost)
    }

    /// Runs the encoded `call` once on every worker, on the connection fetches use, so it waits for
    /// no task: `Client.run`. Each worker's reply, in worker order, or why it has none. It carries
    /// the releases waiting for each worker, so what it sees there is what is still wanted.
    pub fn run_everywhere(&self, call: &[Frame]) -> Vec<Result<Vec<Frame>, Error>> {
        (0..self.workers())
            .map(|worker| {
                let generation = self.directory().generation(worker);
                let releases = self.directory().take_releases(worker);
                let header = wire::header(RUN, &releases, &[0, u64::from(SEND), 0]);
                let mut frames = vec![header.into()];
                frames.extend(call.iter().cloned());
                self.transport
                    .exchange(worker, generation, self.threads_per_worker, &frames)
            })
            .collect()
    }

    /// Sends each release to its worker as soon as it is queued, from a thread of its own, so a
    /// result nobody holds stops taking memory without waiting for another request: what a
    /// user's cluster does. The thread ends once the cluster is dropped or its directory closed.
    pub fn release_promptly(self: &Arc<Self>) -> std::io::Result<()> {
        let cluster = Arc::downgrade(self);
        let directory = Arc::clone(self.directory());
        std::thread::Builder::new()
            .name("belated-releases".into())
            .spawn(move || {
                // The timeout only lets the thread notice a cluster dropped without being closed.
                while !directory.is_closed() {
                    let queued = directory.wait_for_releases(std::time::Duration::from_secs(1));
                    let Some(cluster) = cluster.upgrade() else {
                        return;
                    };
                    if queued {
                        cluster.flush_releases();
                    }
                }
            })
            .map(drop)
    }

    /// Sends every worker the releases waiting for it, so results nobody needs stop taking memory
    /// between computations.
    pub fn flush_releases(&self) {
        for worker in 0..self.workers() {
            if self.directory().has_releases(worker) {
                let generation = self.directory().generation(worker);
                // A worker that died meanwhile took its values with it.
                let _ = self.fetch(worker, generation, &[]);
            }
        }
    }
}

/// The workers running one computation's tasks right now, so cancelling the computation can kill
/// them (a task may never return by itself); and the tasks cancelled one by one (a future of a `map`
/// cancelled alone), whose workers are killed at once while the computation goes on.
pub struct Running {
    cancelled: AtomicBool,
    state: Mutex<RunningState>,
    transport: Arc<dyn Transport>,
}

#[derive(Debug, Default)]
struct RunningState {
    /// Per request on its way or running: its worker, generation and tasks.
    requests: FxHashMap<u64, (usize, u64, Vec<TaskId>)>,
    next: u64,
    /// The tasks cancelled alone: never sent again, and killed where they run.
    tasks: FxHashSet<TaskId>,
    /// The workers killed for such a task: the other tasks they ran are tried again elsewhere, and
    /// that try is not counted against them.
    killed: FxHashSet<(usize, u64)>,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("cancelled", &self.cancelled)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Running {
    fn new(transport: Arc<dyn Transport>) -> Self {
        Running {
            cancelled: AtomicBool::new(false),
            state: Mutex::new(RunningState::default()),
            transport,
        }
    }

    /// Registers a request for `tasks` as running on `worker` until the guard drops; `None` once
    /// the computation, or one of `tasks`, is cancelled.
    fn enter(&self, worker: usize, generation: u64, tasks: &[TaskId]) -> Option<RunningGuard<'_>> {
        let mut state = self.state.lock();
        if self.is_cancelled() || tasks.iter().any(|task| state.tasks.contains(task)) {
            return None;
        }
        let id = state.next;
        state.next += 1;
        state
            .requests
            .insert(id, (worker, generation, tasks.to_vec()));
        Some(RunningGuard { running: self, id })
    }

    /// Cancels the computation: kills every worker running one of its tasks.
    pub fn cancel(&self) {
        let state = self.state.lock();
        self.cancelled.store(true, SeqCst);
        for &(worker, generation, _) in state.requests.values() {
            self.transport.kill(worker, generation);
        }
    }

    /// Cancels `task` alone: it is not sent again, and the worker running it is killed (and
    /// replaced); the other tasks that worker ran are tried again.
    pub fn cancel_task(&self, task: TaskId) {
        let mut state = self.state.lock();
        state.tasks.insert(task);
        let running: Vec<(usize, u64)> = state
            .requests
            .values()
            .filter(|(_, _, tasks)| tasks.contains(&task))
            .map(|&(worker, generation, _)| (worker, generation))
            .collect();
        for (worker, generation) in running {
            state.killed.insert((worker, generation));
            self.transport.kill(worker, generation);
        }
    }

    /// Whether the computation was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(SeqCst)
    }

    fn is_task_cancelled(&self, task: TaskId) -> bool {
        self.state.lock().tasks.contains(&task)
    }

    fn killed_for_a_cancelled_task(&self, worker: usize, generation: u64) -> bool {
        self.state.lock().killed.contains(&(worker, generation))
    }
}

struct RunningGuard<'a> {
    running: &'a Running,
    id: u64,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.running.state.lock().requests.remove(&self.id);
    }
}

/// Why a request failed: the worker died (which, at which generation), or the computation was
/// cancelled before it was sent.
enum Failed {
    Lost(usize, u64),
    Cancelled,
}

/// Why a task produced no result: its own failure, or inputs it found lost.
enum Stop<E> {
    Failed(E),
    Lost(InputsLost),
}

impl<E> Stop<E> {
    fn into_result<V>(self) -> Result<Result<V, E>, InputsLost> {
        match self {
            Stop::Failed(error) => Ok(Err(error)),
            Stop::Lost(lost) => Err(lost),
        }
    }
}

/// A value to fetch from one worker and store in the call's worker under `copy_id`.
struct Transfer {
    source: Arc<Kept>,
    copy_id: u64,
}

/// A large value built here, to store in the call's worker under `copy_id` before the call.
struct Upload {
    frames: Vec<Frame>,
    copy_id: u64,
    bytes: u64,
    sent: Arc<Sent>,
}

/// An input of a call, found.
enum Found<V> {
    Here(V),
    Stored(u64),
}

/// A task's inputs found, and what must reach its worker before the call.
struct Prepared<V> {
    inputs: Vec<Found<V>>,
    transfers: Vec<Transfer>,
    uploads: Vec<Upload>,
}

/// Runs one computation's tasks on a cluster's workers (see the module's policy).
pub struct ClusterRunner<C: Codec, T> {
    cluster: Arc<Cluster<T>>,
    codec: C,
    graph: Graph,
    /// Per task: whether its result stays in its worker (other tasks need it) and/or comes back.
    flags: Vec<u8>,
    retries: usize,
    /// Whether each task has finished once, so that finishing again counts as a recompute.
    finished: Vec<AtomicBool>,
    /// Per task: how many times its worker died while running it alone.
    deaths: Vec<AtomicUsize>,
    /// Per task: whether it was in a batch whose worker died, so that it runs next alone.
    suspect: Vec<AtomicBool>,
    running: Arc<Running>,
    batching: Batching,
    /// How often a task that raised runs again.
    retry: RetryErrors,
}

impl<C: Codec, T> fmt::Debug for ClusterRunner<C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterRunner")
            .field("tasks", &self.graph.len())
            .field("retries", &self.retries)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl<C: Codec, T: Transport> ClusterRunner<C, T> {
    /// A runner of `graph`, whose `outputs` come back, on `cluster`; a task whose worker dies is tried
    /// `retries` more times.
    pub fn new(
        cluster: &Arc<Cluster<T>>,
        codec: C,
        graph: &Graph,
        outputs: &[TaskId],
        retries: usize,
    ) -> Self {
        // A task nothing depends on is an output of its plan; sending it back is also the only way
        // its errors are seen.
        let mut flags: Vec<u8> = graph
            .tasks()
            .map(|task| {
                if graph.dependents(task).is_empty() {
                    SEND
                } else {
                    KEEP
                }
            })
            .collect();
        for output in outputs {
            flags[output.index()] |= SEND;
        }
        let transport: Arc<dyn Transport> = Arc::clone(cluster.transport()) as _;
        ClusterRunner {
            cluster: Arc::clone(cluster),
            codec,
            graph: graph.clone(),
            flags,
            retries,
            finished: graph.tasks().map(|_| AtomicBool::new(false)).collect(),
            deaths: graph.tasks().map(|_| AtomicUsize::new(0)).collect(),
            suspect: graph.tasks().map(|_| AtomicBool::new(false)).collect(),
            running: Arc::new(Running::new(transport)),
            batching: Batching::default(),
            retry: RetryErrors::default(),
        }
    }

    /// Makes a task that raised run again, up to `limit` more times (distributed's `retries=`).
    pub fn retrying_errors(mut self, limit: u32) -> Self {
        self.retry = RetryErrors::new(limit, self.graph.len());
        self
    }

    /// What a task whose run raised `error` gives the engine: the error, or, while it may run again,
    /// a report that it is lost itself, its inputs kept for the next run.
    fn raised(&self, task: TaskId, error: C::Error) -> Stop<C::Error> {
        if self.retry.again(task) {
            Stop::Lost(InputsLost(Vec::new()))
        } else {
            Stop::Failed(error)
        }
    }

    /// Makes `tasks`' results stay in the workers that compute them rather than come back, for a
    /// later computation to use there ([`Codec::kept`]): what `persist` asks.
    pub fn keeping(mut self, tasks: &[TaskId]) -> Self {
        for task in tasks {
            self.flags[task.index()] = KEEP;
        }
        self
    }

    /// The result an earlier computation kept for `task`, if it is still somewhere, fetched here if
    /// it is one that comes back; a lost one (also found lost while fetching it) is computed again
    /// by running the task (its lineage).
    fn still_kept(&self, task: TaskId) -> Option<Result<Held<C::Value>, C::Error>> {
        let held = self
            .codec
            .kept(task)
            .filter(|held| !held.is_lost(self.directory()))?;
        if self.flags[task.index()] & SEND == 0 || held.local.is_some() {
            return Some(Ok(held));
        }
        let copy = held.kept_copy(self.directory())?;
        let fetched = self
            .codec
            .blocking(|| self.cluster.fetch(copy.worker, copy.generation, &[copy.id]));
        match fetched {
            Ok(reply) => Some(self.codec.decode_fetched(&reply).map(|value| Held {
                local: Some(value),
                ..held
            })),
            Err(_) => {
                // Its worker died; the task's run finds the replacement.
                let _ = self
                    .codec
                    .blocking(|| self.cluster.transport.replace(copy.worker, copy.generation));
                None
            }
        }
    }

    /// The computation's running tasks, to cancel it.
    pub fn running(&self) -> &Arc<Running> {
        &self.running
    }

    /// The codec.
    pub fn codec(&self) -> &C {
        &self.codec
    }

    /// Runs `task` on `inputs` from pool thread `slot`: on worker `slot / threads_per_worker`;
    /// `Err` when inputs were found lost (the engine recomputes them).
    pub fn run_on(
        &self,
        slot: usize,
        task: TaskId,
        inputs: &[Held<C::Value>],
    ) -> Result<Result<Held<C::Value>, C::Error>, InputsLost> {
        if let Some(kept) = self.still_kept(task) {
            return Ok(kept);
        }
        if let Err(error) = self.codec.before(task) {
            return Ok(Err(error));
        }
        let started = Instant::now();
        let evaluated = self.evaluate(slot, task, inputs);
        self.batching.ran(1, started.elapsed());
        self.complete(task, evaluated)
    }

    /// What the engine receives for `task`, once evaluated.
    fn complete(
        &self,
        task: TaskId,
        evaluated: Result<Held<C::Value>, Stop<C::Error>>,
    ) -> Result<Result<Held<C::Value>, C::Error>, InputsLost> {
        let held = match evaluated {
            Ok(held) => held,
            Err(stop) => return stop.into_result(),
        };
        if self.finished[task.index()].swap(true, SeqCst) {
            self.cluster.stats.recomputed.fetch_add(1, SeqCst);
        }
        Ok(self
            .codec
            .after(task, held.local.as_ref())
            .and_then(|()| self.codec.ran(task, &held))
            .map(|()| held))
    }

    /// Runs `batch` from pool thread `slot`: the tasks whose inputs are all here or in the worker
    /// in one message, the others each alone. Each result goes to `settled` as its reply comes; a
    /// batch that overran hands back the calls its worker had not started, as lost inputs naming
    /// none, which the engine makes ready again for any thread.
    fn run_batch_on(
        &self,
        slot: usize,
        batch: Vec<(TaskId, Vec<Held<C::Value>>)>,
        settled: &mut Settled<'_, Self>,
    ) {
        let started = Instant::now();
        let worker = slot / self.cluster.threads_per_worker;
        let connection = slot % self.cluster.threads_per_worker;
        // Each task with its inputs until it is settled.
        let mut entries: Vec<Option<Entry<C::Value>>> = batch.into_iter().map(Some).collect();
        let mut group = Vec::new();
        // (index in the batch, result id, whether it calls the function of the call before, the
        // call's frames)
        let mut calls: Vec<(usize, u64, bool, Vec<Frame>)> = Vec::new();
        // The function frame of the call before. A call of the same function drops its copy as soon
        // as it is encoded: a thousand copies alive at once, freed together, cost the allocator more
        // than the rest of their encoding.
        let mut function: Option<Vec<u8>> = None;
        for at in 0..entries.len() {
            let (task, inputs) = entries[at].as_ref().expect("not settled yet");
            match self.batched_call(slot, *task, inputs) {
                Ok(mut frames) => {
                    let same = match frames.first() {
                        Some(Frame::Bytes(head)) if function.as_ref() == Some(head) => {
                            frames.remove(0);
                            true
                        }
                        Some(Frame::Bytes(head)) => {
                            function = Some(head.clone());
                            false
                        }
                        _ => {
                            function = None;
                            false
                        }
                    };
                    calls.push((at, self.directory().new_id(), same, frames));
                }
                Err(result) => group.push(hand(&mut entries, at, result)),
            }
        }
        if calls.is_empty() {
            self.batching.ran(1, started.elapsed());
            settled(group);
            return;
        }
        let task_of = |at: usize, entries: &[Option<Entry<C::Value>>]| {
            entries[at].as_ref().expect("not settled yet").0
        };
        let generation = self.directory().generation(worker);
        let tasks: Vec<TaskId> = calls
            .iter()
            .map(|(at, _, _, _)| task_of(*at, &entries))
            .collect();
        let overrun =
            u64::try_from(self.batching.overrun(calls.len()).as_micros()).unwrap_or(u64::MAX);
        let mut rest = vec![overrun, calls.len() as u64];
        let releases = self.directory().take_releases(worker);
        let mut request = vec![Frame::Bytes(Vec::new())];
        for ((_, result_id, same, frames), task) in calls.iter_mut().zip(&tasks) {
            let mut flags = self.flags[task.index()];
            if *same {
                flags |= SAME_FUNCTION;
            }
            rest.extend([*result_id, u64::from(flags), frames.len() as u64]);
            request.append(frames);
        }
        request[0] = wire::header(BATCH, &releases, &rest).into();
        let nothing_sent = Prepared {
            inputs: Vec::new(),
            transfers: Vec::new(),
            uploads: Vec::new(),
        };
        // Registered as running until the batch's last reply, so that a cancel between its
        // replies still kills the worker.
        let outcome = match self.running.enter(worker, generation, &tasks) {
            None => Err(Failed::Cancelled),
            Some(_running) => {
                let transport = &self.cluster.transport;
                let mut reply = self
                    .codec
                    .blocking(|| transport.exchange(worker, generation, connection, &request));
                // The call whose reply comes next, and where the batch ends.
                let (mut next, mut end) = (0, calls.len());
                loop {
                    let Ok(frames) = reply else {
                        break Err(Failed::Lost(worker, generation));
                    };
                    let Some(parsed) = wire::BatchReply::parse(frames, end, next) else {
                        // A worker that garbled its reply is not trusted with more.
                        transport.kill(worker, generation);
                        break Err(Failed::Lost(worker, generation));
                    };
                    let last = parsed.is_last();
                    next = parsed.first + parsed.replies.len();
                    for ((at, result_id, _, _), frames) in
                        calls[parsed.first..].iter().zip(parsed.replies)
                    {
                        let task = task_of(*at, &entries);
                        let flags = self.flags[task.index()];
                        let evaluated = self
                            .received(
                                &nothing_sent,
                                worker,
                                generation,
                                *result_id,
                                flags,
                                &frames,
                            )
                            .map_err(|error| self.raised(task, error));
                        group.push(hand(&mut entries, *at, self.complete(task, evaluated)));
                    }
                    for (at, _, _, _) in &calls[parsed.end..end] {
                        let task = task_of(*at, &entries);
                        group.push(hand(&mut entries, *at, Err(InputsLost::not_started(task))));
                    }
                    end = parsed.end;
                    if last {
                        break Ok(());
                    }
                    settled(std::mem::take(&mut group));
                    reply = self
                        .codec
                        .blocking(|| transport.receive(worker, generation, connection));
                }
            }
        };
        let unsettled: Vec<usize> = calls
            .iter()
            .map(|(at, _, _, _)| *at)
            .filter(|&at| entries[at].is_some())
            .collect();
        match outcome {
            Ok(()) => {}
            // A task of the batch was cancelled alone: the others go one by one.
            Err(Failed::Cancelled) if !self.running.is_cancelled() => {
                for at in unsettled {
                    let (task, inputs) = entries[at].as_ref().expect("not settled yet");
                    let evaluated = self.evaluate(slot, *task, inputs);
                    let result = self.complete(*task, evaluated);
                    group.push(hand(&mut entries, at, result));
                }
            }
            Err(Failed::Lost(lost, generation))
                if !self.running.is_cancelled() && !self.directory().is_closed() =>
            {
                // Run again, a task finds the worker closed if it could not be replaced.
                let _ = self
                    .codec
                    .blocking(|| self.cluster.transport.replace(lost, generation));
                let killed_for_a_cancel =
                    lost == worker && self.killed_for_a_cancel(lost, generation);
                for at in unsettled {
                    let (task, inputs) = entries[at].as_ref().expect("not settled yet");
                    if killed_for_a_cancel {
                        // Not their failure: each runs again at once, as evaluate() has it.
                        let result = self.complete(*task, self.evaluate(slot, *task, inputs));
                        group.push(hand(&mut entries, at, result));
                        continue;
                    }
                    self.suspect[task.index()].store(true, SeqCst);
                    let lost = self.lost_inputs(slot, *task, inputs);
                    group.push(hand(&mut entries, at, Err(lost)));
                }
            }
            Err(failed) => {
                if let Failed::Lost(lost, generation) = failed {
                    let _ = self
                        .codec
                        .blocking(|| self.cluster.transport.replace(lost, generation));
                }
                for at in unsettled {
                    let error = self.codec.failed(task_of(at, &entries), Error::Cancelled);
                    group.push(hand(&mut entries, at, Ok(Err(error))));
                }
            }
        }
        self.batching.ran(calls.len(), started.elapsed());
        settled(group);
    }

    /// How `task` of a batch goes: the frames of its call, to send with the others, or its result
    /// (kept from before, failed before it ran, made here, or run alone because its inputs must
    /// reach the worker first or its last batch's worker died).
    fn batched_call(
        &self,
        slot: usize,
        task: TaskId,
        inputs: &[Held<C::Value>],
    ) -> Result<Vec<Frame>, Recoverable<Self>> {
        if let Some(kept) = self.still_kept(task) {
            return Err(Ok(kept));
        }
        if let Err(error) = self.codec.before(task) {
            return Err(Ok(Err(error)));
        }
        let prepared = self
            .prepare(slot, task, inputs)
            .map_err(Stop::into_result)?;
        let suspect = self.suspect[task.index()].swap(false, SeqCst);
        if suspect || !prepared.transfers.is_empty() || !prepared.uploads.is_empty() {
            let evaluated = self.evaluate(slot, task, inputs);
            return Err(self.complete(task, evaluated));
        }
        match self.encode(task, &prepared) {
            Ok(Encoded::Ready(value)) => {
                let held = Held {
                    local: Some(value),
                    remote: None,
                    sent: Some(Arc::default()),
                };
                Err(self.complete(task, Ok(held)))
            }
            Ok(Encoded::Call(frames)) => Ok(frames),
            Err(error) => Err(Ok(Err(error))),
        }
    }

    /// `task`'s call on its `prepared` inputs.
    fn encode(
        &self,
        task: TaskId,
        prepared: &Prepared<C::Value>,
    ) -> Result<Encoded<C::Value>, C::Error> {
        let call_inputs: Vec<Input<'_, C::Value>> = prepared
            .inputs
            .iter()
            .map(|found| match found {
                Found::Here(value) => Input::Here(value),
                Found::Stored(id) => Input::Stored(*id),
            })
            .collect();
        self.codec.encode_call(task, &call_inputs)
    }

    fn directory(&self) -> &Arc<Directory> {
        self.cluster.directory()
    }

    /// Where each input is for worker `worker`, or which are lost.
    fn prepare(
        &self,
        slot: usize,
        task: TaskId,
        inputs: &[Held<C::Value>],
    ) -> Result<Prepared<C::Value>, Stop<C::Error>> {
        let worker = slot / self.cluster.threads_per_worker;
        let mut lost = Vec::new();
        let mut prepared = Prepared {
            inputs: Vec::with_capacity(inputs.len()),
            transfers: Vec::new(),
            uploads: Vec::new(),
        };
        for (held, &dep) in inputs.iter().zip(self.graph.deps(task)) {
            let found = match held.source(self.directory(), worker) {
                Source::Here(value) => {
                    match self.upload(task, held, &value).map_err(Stop::Failed)? {
                        Some(upload) => {
                            let id = upload.copy_id;
                            prepared.uploads.push(upload);
                            Found::Stored(id)
                        }
                        None => Found::Here(value),
                    }
                }
                Source::InMyWorker(id) => Found::Stored(id),
                Source::Elsewhere(source) => {
                    let copy_id = self.directory().new_id();
                    prepared.transfers.push(Transfer { source, copy_id });
                    Found::Stored(copy_id)
                }
                Source::Lost => {
                    lost.push(dep);
                    continue;
                }
            };
            prepared.inputs.push(found);
        }
        match lost.is_empty() {
            true => Ok(prepared),
            false => Err(Stop::Lost(InputsLost(lost))),
        }
    }

    /// The inputs of `task` that no worker holds any more, after a worker died: the engine
    /// recomputes them before the task runs again.
    fn lost_inputs(&self, slot: usize, task: TaskId, inputs: &[Held<C::Value>]) -> InputsLost {
        let worker = slot / self.cluster.threads_per_worker;
        let lost = inputs.iter().zip(self.graph.deps(task));
        InputsLost(
            lost.filter(|(held, _)| matches!(held.source(self.directory(), worker), Source::Lost))
                .map(|(_, &dep)| dep)
                .collect(),
        )
    }

    /// `value` (built here for `held`, an input of `task`) as an upload to the call's worker, if it
    /// is large enough that sending it once beats sending it with every call.
    fn upload(
        &self,
        task: TaskId,
        held: &Held<C::Value>,
        value: &C::Value,
    ) -> Result<Option<Upload>, C::Error> {
        let Some(sent) = &held.sent else {
            return Ok(None);
        };
        let bytes = match sent.bytes.get() {
            Some(&bytes) => bytes,
            None => {
                let bytes = self.codec.size(value)?;
                *sent.bytes.get_or_init(|| bytes)
            }
        };
        if bytes < SEND_ONCE_BYTES {
            return Ok(None);
        }
        let frames = match sent.frames.get() {
            Some(frames) => frames.clone(),
            None => {
                let frames = self.codec.encode_value(task, value)?;
                sent.frames.get_or_init(|| frames).clone()
            }
        };
        Ok(Some(Upload {
            frames,
            copy_id: self.directory().new_id(),
            bytes,
            sent: Arc::clone(sent),
        }))
    }

    /// Fetches the values a call needs from other workers and adds those built here: the frames to
    /// send before the call's, and the header words describing them.
    fn fetch_transfers(
        &self,
        transfers: &[Transfer],
        uploads: &mut [Upload],
    ) -> Result<(Vec<Frame>, Vec<u64>), Failed> {
        let mut by_source: FxHashMap<(usize, u64), Vec<&Transfer>> = FxHashMap::default();
        for transfer in transfers {
            by_source
                .entry((transfer.source.worker, transfer.source.generation))
                .or_default()
                .push(transfer);
        }
        let blocks = by_source.len() + uploads.len();
        let (mut frames, mut words) = (Vec::new(), vec![blocks as u64]);
        for upload in uploads {
            words.extend([1, upload.copy_id, upload.frames.len() as u64]);
            frames.append(&mut upload.frames);
        }
        for ((worker, generation), transfers) in by_source {
            let ids: Vec<u64> = transfers.iter().map(|t| t.source.id).collect();
            let reply = self
                .cluster
                .fetch(worker, generation, &ids)
                .map_err(|_| Failed::Lost(worker, generation))?;
            words.push(ids.len() as u64);
            words.extend(transfers.iter().map(|t| t.copy_id));
            words.push(reply.len() as u64);
            frames.extend(reply);
        }
        self.cluster
            .stats
            .transferred
            .fetch_add(transfers.len() as u64, SeqCst);
        Ok((frames, words))
    }

    /// Sends `request` (for `tasks`) to `worker` at `generation` on `slot`'s connection, registered
    /// as running.
    fn send(
        &self,
        slot: usize,
        (worker, generation): (usize, u64),
        tasks: &[TaskId],
        request: &[Frame],
    ) -> Result<Vec<Frame>, Failed> {
        let Some(_running) = self.running.enter(worker, generation, tasks) else {
            return Err(Failed::Cancelled);
        };
        let connection = slot % self.cluster.threads_per_worker;
        self.cluster
            .transport
            .exchange(worker, generation, connection, request)
            .map_err(|_| Failed::Lost(worker, generation))
    }

    /// Runs `task` on `slot`'s worker. A worker that dies under it is replaced, and the task is
    /// reported lost for the engine to run again, until it has died `retries` + 1 times.
    fn evaluate(
        &self,
        slot: usize,
        task: TaskId,
        inputs: &[Held<C::Value>],
    ) -> Result<Held<C::Value>, Stop<C::Error>> {
        let worker = slot / self.cluster.threads_per_worker;
        let flags = self.flags[task.index()];
        let failed = |error| Stop::Failed(self.codec.failed(task, error));
        let mut prepared = self.prepare(slot, task, inputs)?;
        let call_frames = match self.encode(task, &prepared).map_err(Stop::Failed)? {
            Encoded::Ready(value) => {
                return Ok(Held {
                    local: Some(value),
                    remote: None,
                    sent: Some(Arc::default()),
                })
            }
            Encoded::Call(frames) => frames,
        };
        let result_id = self.directory().new_id();
        let generation = self.directory().generation(worker);
        let outcome = self.codec.blocking(|| {
            let (transfer_frames, mut words) =
                self.fetch_transfers(&prepared.transfers, &mut prepared.uploads)?;
            let mut rest = vec![result_id, u64::from(flags)];
            rest.append(&mut words);
            let releases = self.directory().take_releases(worker);
            let mut request = vec![wire::header(RUN, &releases, &rest).into()];
            request.extend(transfer_frames);
            request.extend(call_frames);
            self.send(slot, (worker, generation), &[task], &request)
        });
        match outcome {
            Ok(reply) => self
                .received(&prepared, worker, generation, result_id, flags, &reply)
                .map_err(|error| self.raised(task, error)),
            Err(Failed::Cancelled) => Err(failed(Error::Cancelled)),
            // Killed by a cancel (of the computation, or of this task alone), or by close(): this
            // run is over either way, and the next one finds a new worker in its place.
            Err(Failed::Lost(lost, generation))
                if self.running.is_cancelled()
                    || self.directory().is_closed()
                    || self.running.is_task_cancelled(task) =>
            {
                let _ = self
                    .codec
                    .blocking(|| self.cluster.transport.replace(lost, generation));
                Err(failed(Error::Cancelled))
            }
            Err(Failed::Lost(lost, generation)) => {
                let why = self
                    .codec
                    .blocking(|| self.cluster.transport.replace(lost, generation))
                    .map_err(failed)?;
                // A worker an input was fetched from may die too: the task's next run fetches a
                // copy or finds the input lost, and the schedule bounds how often it runs again.
                if lost == worker && self.killed_for_a_cancel(lost, generation) {
                    // Not this task's failure: it runs again at once, on the replacement. Reported
                    // lost, it would count as a loss of its own, and the engine fails a task lost
                    // more than `retries` + 1 times, however many cancels beside it did that.
                    return self.evaluate(slot, task, inputs);
                }
                if lost == worker {
                    let tries = self.deaths[task.index()].fetch_add(1, SeqCst) + 1;
                    if tries > self.retries {
                        return Err(failed(Error::TaskLost { tries, why }));
                    }
                }
                Err(Stop::Lost(self.lost_inputs(slot, task, inputs)))
            }
        }
    }

    /// Whether `worker` at `generation` was killed for a task cancelled alone, of this computation
    /// or another, or for another computation's cancel.
    fn killed_for_a_cancel(&self, worker: usize, generation: u64) -> bool {
        self.running.killed_for_a_cancelled_task(worker, generation)
            || self.cluster.transport.killed(worker, generation)
    }

    /// Records what the call's worker now holds and decodes its reply.
    #[allow(clippy::too_many_arguments)] // one call's bookkeeping, from one place
    fn received(
        &self,
        prepared: &Prepared<C::Value>,
        worker: usize,
        generation: u64,
        result_id: u64,
        flags: u8,
        reply: &[Frame],
    ) -> Result<Held<C::Value>, C::Error> {
        let directory = self.directory();
        // The worker stored the values it received even if the task then failed.
        for transfer in &prepared.transfers {
            let source = &transfer.source;
            source.add_copy(Kept::new(
                directory,
                transfer.copy_id,
                worker,
                generation,
                source.bytes,
            ));
        }
        let uploaded = prepared.uploads.len() as u64;
        self.cluster.stats.uploaded.fetch_add(uploaded, SeqCst);
        for upload in &prepared.uploads {
            upload.sent.add_copy(Kept::new(
                directory,
                upload.copy_id,
                worker,
                generation,
                upload.bytes,
            ));
        }
        let (local, bytes) = if flags & SEND != 0 {
            let value = self.codec.decode_value(reply)?;
            (
                Some(value),
                reply.iter().map(|frame| frame.len() as u64).sum(),
            )
        } else {
            // A kept result that is not sent back comes with its size in its place.
            (None, self.codec.decode_size(reply)?)
        };
        let remote =
            (flags & KEEP != 0).then(|| Kept::new(directory, result_id, worker, generation, bytes));
        Ok(Held {
            local,
            remote,
            sent: None,
        })
    }
}

/// A task of a batch, with its inputs.
type Entry<V> = (TaskId, Vec<Held<V>>);

/// Entry `at` of a batch, settled with `result`, as [`Settled`] takes it.
fn hand<V, R>(entries: &mut [Option<Entry<V>>], at: usize, result: R) -> (TaskId, R, Vec<Held<V>>) {
    let (task, inputs) = entries[at].take().expect("settled once");
    (task, result, inputs)
}

impl<C: Codec, T: Transport> Runner for ClusterRunner<C, T> {
    type Value = Held<C::Value>;
    type Error = C::Error;

    /// Off the engine (which calls [`Runner::run_recoverable`]), inputs found lost fail the task.
    fn run(&self, task: TaskId, inputs: &[Self::Value]) -> Result<Self::Value, C::Error> {
        self.run_on(current_worker().unwrap_or(0), task, inputs)
            .unwrap_or_else(|_| Err(self.codec.failed(task, Error::InputsLost)))
    }

    fn run_recoverable(
        &self,
        task: TaskId,
        inputs: &mut Vec<Self::Value>,
    ) -> Result<Result<Self::Value, C::Error>, InputsLost> {
        // Off the pool's threads (a test driving the runner itself) it is the first thread's slot.
        self.run_on(current_worker().unwrap_or(0), task, inputs)
    }

    fn recompute_limit(&self) -> u32 {
        u32::try_from(self.retries)
            .map_or(u32::MAX, |retries| retries.saturating_add(1))
            .saturating_add(self.retry.limit())
    }

    fn batch_size(&self, ready: usize) -> usize {
        let threads = self.cluster.workers() * self.cluster.threads_per_worker;
        self.batching.size(ready, threads)
    }

    fn run_batch(&self, batch: Vec<(TaskId, Vec<Self::Value>)>, settled: &mut Settled<'_, Self>) {
        self.run_batch_on(current_worker().unwrap_or(0), batch, settled);
    }

    /// The worker holding most of the inputs' bytes ([`placement::most_input_bytes`]).
    fn place(
        &self,
        _task: TaskId,
        inputs: &mut dyn Iterator<Item = &Self::Value>,
    ) -> Option<usize> {
        let held = inputs.filter_map(|held| held.remote.as_ref().map(|r| (r.worker, r.bytes)));
        placement::most_input_bytes(self.cluster.workers(), held)
    }
}
