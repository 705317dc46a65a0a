//! A cluster's worker processes: started together, replaced when one dies, killed over their memory
//! limit, added and retired while they run (a scale), closed together.
//!
//! Invariants:
//! - One keeper thread starts every worker (so `PR_SET_PDEATHSIG`, which follows the thread that
//!   started a process, fires when this process dies, not when some short-lived thread ends), and
//!   every [`MEMORY_POLL`] kills the workers over the memory limit.
//! - A worker's slot is never locked while its replacement starts (that may take a minute): the
//!   slot is marked as replacing, and those who want it wait on its condition variable.
//! - Each replacement bumps the worker's generation in the [`Directory`]: what the old one held is
//!   lost, and requests meant for it fail instead of reaching the new one.
//! - The live workers are slots `0..len()`: [`Workers::add`] starts workers in the slots after them,
//!   and [`Workers::retire`] lets go of the last ones (a retired worker is a new generation, so it is
//!   never replaced). A retired process is killed only when the last request using it is done:
//!   retiring never kills a running task.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::directory::Directory;
use crate::error::Error;
use crate::process::{MemoryLimit, Spec, WorkerProcess};
use crate::runner::Transport;
use crate::wire::Frame;

/// How often the keeper looks at the workers' memory.
pub const MEMORY_POLL: Duration = Duration::from_millis(100);

/// The worker processes of one cluster.
#[derive(Debug)]
pub struct Workers {
    slots: Vec<Slot>,
    directory: Arc<Directory>,
    keeper: Mutex<Option<mpsc::Sender<SpawnRequest>>>,
    memory_limit: Option<MemoryLimit>,
    replaced: AtomicU64,
    /// Held while workers are added or retired, so that two resizes never take the same slots.
    resizing: Mutex<()>,
}

#[derive(Debug, Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Signalled when a replacement is done.
    replaced: Condvar,
}

#[derive(Debug, Default)]
struct SlotState {
    /// `None` once closed, and while the worker is being replaced.
    worker: Option<Arc<WorkerProcess>>,
    replacing: bool,
    /// How the previous generation ended.
    last_death: String,
    /// The last generation ended by [`Transport::kill`]; asked about right after that worker's
    /// replacement, so the last one is enough.
    killed: Option<u64>,
}

type Spawned = Result<WorkerProcess, Error>;

/// Work for the keeper thread.
#[derive(Debug)]
struct SpawnRequest {
    count: usize,
    reply: mpsc::Sender<Vec<Spawned>>,
}

impl Workers {
    /// Starts `count` workers of `spec`, in a cluster that may grow to `room`, and waits until they
    /// are all ready.
    pub fn start(
        spec: Spec,
        count: usize,
        room: usize,
        memory_limit: Option<MemoryLimit>,
    ) -> Result<Arc<Self>, Error> {
        let (keeper, requests) = mpsc::channel();
        let room = room.max(count);
        let workers = Arc::new(Workers {
            slots: (0..room).map(|_| Slot::default()).collect(),
            directory: Arc::new(Directory::with_room(count, room)),
            keeper: Mutex::new(Some(keeper)),
            memory_limit,
            replaced: AtomicU64::new(0),
            resizing: Mutex::new(()),
        });
        let weak = Arc::downgrade(&workers);
        std::thread::Builder::new()
            .name("belated-cluster-keeper".into())
            .spawn(move || keep(spec, requests, weak))
            .map_err(Error::Spawn)?;
        let started = workers.spawn(count).and_then(|started| {
            for (slot, worker) in workers.slots.iter().zip(started) {
                slot.state.lock().worker = Some(Arc::new(worker?));
            }
            Ok(())
        });
        match started {
            Ok(()) => Ok(workers),
            Err(error) => {
                workers.close(false);
                Err(error)
            }
        }
    }

    /// How many workers are live.
    pub fn len(&self) -> usize {
        self.directory.workers()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Starts `count` more workers, beside the running ones (which go on with their tasks), and
    /// waits until they are ready; they are then live, at the indices after the others. The new
    /// count, or why none was added.
    pub fn add(&self, count: usize) -> Result<usize, Error> {
        let _resizing = self.resizing.lock();
        let from = self.len();
        let to = from + count;
        if to > self.slots.len() {
            return Err(Error::Full(self.slots.len()));
        }
        let started = self
            .spawn(count)?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        if self.is_closed() {
            return Err(Error::Closed);
        }
        for (slot, worker) in self.slots[from..to].iter().zip(started) {
            let mut slot = slot.state.lock();
            slot.worker = Some(Arc::new(worker));
            slot.last_death.clear();
        }
        self.directory.grow(to);
        Ok(to)
    }

    /// Retires the workers after the first `staying`: nothing is sent to them any more, what they
    /// held is lost (move what must stay first), and each process ends once the requests still
    /// using it are done.
    pub fn retire(&self, staying: usize) {
        let _resizing = self.resizing.lock();
        let live = self.len();
        self.directory.shrink(staying);
        for slot in self.slots.get(staying..live).into_iter().flatten() {
            let Slot { state, replaced } = slot;
            let mut slot = state.lock();
            while slot.replacing {
                replaced.wait(&mut slot);
            }
            slot.last_death = "it was retired (the cluster was scaled down)".into();
            // Dropped with the slot's lock released: a request still running holds its own
            // reference, and the process is killed after it.
            let worker = slot.worker.take();
            drop(slot);
            drop(worker);
        }
    }

    /// Where each value the workers keep lives.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    pub fn memory_limit(&self) -> Option<u64> {
        self.memory_limit.as_ref().map(|limit| limit.bytes)
    }

    /// How many workers were replaced.
    pub fn replaced(&self) -> u64 {
        self.replaced.load(SeqCst)
    }

    pub fn is_closed(&self) -> bool {
        self.directory.is_closed()
    }

    fn spawn(&self, count: usize) -> Result<Vec<Spawned>, Error> {
        let (reply, replies) = mpsc::channel();
        let keeper = self.keeper.lock().clone();
        keeper
            .ok_or(Error::Closed)?
            .send(SpawnRequest { count, reply })
            .map_err(|_| Error::Closed)?;
        replies.recv().map_err(|_| Error::Closed)
    }

    /// Worker `index` if it is still at `generation`, waiting while it is being replaced.
    pub fn worker(&self, index: usize, generation: u64) -> Option<Arc<WorkerProcess>> {
        let Slot { state, replaced } = &self.slots[index];
        let mut slot = state.lock();
        while slot.replacing {
            replaced.wait(&mut slot);
        }
        let worker = slot.worker.as_ref()?;
        (self.directory.generation(index) == generation).then(|| Arc::clone(worker))
    }

    /// Replaces worker `index` if it is still at `generation`; returns how that one ended (also
    /// when another caller replaced it first).
    pub fn replace(&self, index: usize, generation: u64) -> Result<String, Error> {
        let Slot { state, replaced } = &self.slots[index];
        let mut slot = state.lock();
        while slot.replacing {
            replaced.wait(&mut slot);
        }
        if self.directory.generation(index) != generation {
            return Ok(slot.last_death.clone());
        }
        let old = slot.worker.take().ok_or(Error::Closed)?;
        slot.replacing = true;
        drop(slot);
        old.kill();
        let why = old.ending(self.memory_limit.as_ref());
        drop(old);
        let new = self
            .spawn(1)
            .and_then(|mut new| new.pop().expect("one asked"));
        let mut slot = state.lock();
        slot.replacing = false;
        slot.last_death = why.clone();
        self.directory.replaced(index);
        let outcome = match new {
            Ok(new) if !self.is_closed() => {
                slot.worker = Some(Arc::new(new));
                self.replaced.fetch_add(1, SeqCst);
                Ok(why)
            }
            Ok(_) => Err(Error::Closed),
            Err(error) => Err(error),
        };
        replaced.notify_all();
        outcome
    }

    /// The process ids of the live workers still running: not one that died and is not replaced yet.
    pub fn pids(&self) -> Vec<u32> {
        self.pids_by_worker().into_iter().flatten().collect()
    }

    /// Per live worker, by index, its process id while it runs (`None` for one that died and is not
    /// replaced yet).
    pub fn pids_by_worker(&self) -> Vec<Option<u32>> {
        self.slots[..self.len()]
            .iter()
            .map(|slot| {
                let slot = slot.state.lock();
                let worker = slot.worker.as_ref()?;
                (!worker.has_exited()).then(|| worker.pid())
            })
            .collect()
    }

    /// Stops the workers: kills them, or with `forget` (in a forked child, where they are the
    /// parent's) lets go of them untouched.
    pub fn close(&self, forget: bool) {
        self.directory.close();
        *self.keeper.lock() = None;
        for slot in &self.slots {
            match slot.state.lock().worker.take() {
                Some(worker) if forget => std::mem::forget(worker),
                worker => drop(worker),
            }
        }
    }

    fn enforce_memory_limit(&self, limit: u64) {
        for slot in &self.slots[..self.len()] {
            let Some(worker) = slot.state.lock().worker.clone() else {
                continue;
            };
            if worker.over_memory() {
                continue;
            }
            if let Some(used) = worker.resident_bytes().filter(|&used| used > limit) {
                worker.kill_for_memory(used);
            }
        }
    }
}

impl Transport for Workers {
    fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    fn exchange(
        &self,
        worker: usize,
        generation: u64,
        connection: usize,
        frames: &[Frame],
    ) -> Result<Vec<Frame>, Error> {
        self.worker(worker, generation)
            .ok_or(Error::Lost)?
            .exchange(connection, frames)
    }

    fn receive(
        &self,
        worker: usize,
        generation: u64,
        connection: usize,
    ) -> Result<Vec<Frame>, Error> {
        self.worker(worker, generation)
            .ok_or(Error::Lost)?
            .connection(connection)
            .receive()
    }

    /// Does not wait for a replacement in progress: the worker it replaces was killed already.
    fn kill(&self, worker: usize, generation: u64) {
        let mut slot = self.slots[worker].state.lock();
        if self.directory.generation(worker) == generation {
            if let Some(process) = &slot.worker {
                process.kill();
                slot.killed = Some(generation);
            }
        }
    }

    fn killed(&self, worker: usize, generation: u64) -> bool {
        self.slots[worker].state.lock().killed == Some(generation)
    }

    fn replace(&self, worker: usize, generation: u64) -> Result<String, Error> {
        Workers::replace(self, worker, generation)
    }
}

/// The keeper thread: starts workers when asked (started together, then waited for, so they import
/// at the same time) and polices the memory limit, until the workers are dropped or closed.
fn keep(spec: Spec, requests: mpsc::Receiver<SpawnRequest>, workers: Weak<Workers>) {
    loop {
        match requests.recv_timeout(MEMORY_POLL) {
            Ok(SpawnRequest { count, reply }) => {
                let started: Vec<Spawned> =
                    (0..count).map(|_| WorkerProcess::start(&spec)).collect();
                let ready = started
                    .into_iter()
                    .map(|started| {
                        let worker = started?;
                        worker.wait_ready(spec.start_timeout)?;
                        Ok(worker)
                    })
                    .collect();
                let _ = reply.send(ready);
            }
            Err(RecvTimeoutError::Timeout) => {
                let Some(workers) = workers.upgrade() else {
                    return;
                };
                if let Some(limit) = workers.memory_limit() {
                    workers.enforce_memory_limit(limit);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Workers that are shell scripts echoing on their one connection.
    fn echoing() -> Spec {
        Spec {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "printf r >&3; exec cat <&4 >&4".into()],
            env: Vec::new(),
            connections: 1,
            start_timeout: Duration::from_secs(30),
            requests: None,
        }
    }

    #[test]
    fn a_replaced_worker_is_a_new_generation_and_requests_for_the_old_one_fail() {
        let workers = Workers::start(echoing(), 2, 2, None).expect("two workers start");
        let first = workers.worker(1, 0).expect("generation 0");
        let pid = first.pid();
        first.kill();
        assert!(first.exchange(0, &[vec![1].into()]).is_err());
        drop(first);
        assert_eq!(
            workers.replace(1, 0).expect("replaced"),
            "it died (signal: 9 (SIGKILL))"
        );
        assert!(workers.worker(1, 0).is_none(), "the old generation is gone");
        let second = workers.worker(1, 1).expect("generation 1");
        assert_ne!(second.pid(), pid);
        let two = [Frame::from(vec![2])];
        assert_eq!(second.exchange(0, &two).expect("an echo"), two);
        // A late caller that saw the same death does not replace the new worker.
        assert_eq!(
            workers.replace(1, 0).expect("already done"),
            "it died (signal: 9 (SIGKILL))"
        );
        assert_eq!(workers.replaced(), 1);
        assert_eq!(workers.pids().len(), 2);
    }

    #[test]
    fn callers_of_one_death_wait_for_one_replacement() {
        let workers = Workers::start(echoing(), 1, 1, None).expect("a worker starts");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let workers = Arc::clone(&workers);
                std::thread::spawn(move || workers.replace(0, 0).map(|_| ()))
            })
            .collect();
        for thread in threads {
            thread.join().expect("a thread").expect("replaced");
        }
        assert_eq!(workers.replaced(), 1);
        assert!(workers.worker(0, 1).is_some());
    }

    #[test]
    fn workers_added_beside_running_ones_and_retired_after_their_last_request() {
        let workers = Workers::start(echoing(), 1, 3, None).expect("a worker starts");
        let first = workers.worker(0, 0).expect("running");
        assert_eq!(workers.add(2).expect("two more"), 3);
        assert_eq!(workers.worker(0, 0).expect("the same").pid(), first.pid());
        let pids = workers.pids();
        assert_eq!(pids.len(), 3);
        assert!(matches!(workers.add(1), Err(Error::Full(3))));
        // A request still using the last worker: it is retired, not killed under the request.
        let last = workers.worker(2, 0).expect("live");
        workers.retire(1);
        assert_eq!(workers.len(), 1);
        assert_eq!(workers.pids(), [first.pid()]);
        assert!(
            workers.worker(2, 0).is_none(),
            "nothing is sent to it any more"
        );
        let two = [Frame::from(vec![2])];
        assert_eq!(last.exchange(0, &two).expect("still answers"), two);
        assert_eq!(
            workers.replace(2, 0).expect("not replaced"),
            "it was retired (the cluster was scaled down)"
        );
        drop(last);
        assert_eq!(workers.replaced(), 0);
        // Its slot takes a fresh worker, a new generation.
        assert_eq!(workers.add(1).expect("again"), 2);
        let again = workers.worker(1, 1).expect("generation 1");
        assert!(!pids.contains(&again.pid()));
        assert_eq!(again.exchange(0, &two).expect("an echo"), two);
    }

    #[test]
    fn a_dead_worker_is_not_listed_before_its_replacement() {
        let workers = Workers::start(echoing(), 2, 2, None).expect("two workers start");
        let dead = workers.worker(1, 0).expect("running");
        dead.kill();
        assert_eq!(dead.exit_status(), "signal: 9 (SIGKILL)");
        let live = workers.worker(0, 0).expect("live").pid();
        assert_eq!(workers.pids(), [live]);
        assert_eq!(workers.pids_by_worker(), [Some(live), None]);
    }

    #[test]
    fn a_closed_pool_starts_nothing_and_its_workers_end() {
        let workers = Workers::start(echoing(), 1, 1, None).expect("a worker starts");
        let worker = workers.worker(0, 0).expect("running");
        workers.close(false);
        assert!(workers.is_closed());
        assert!(workers.pids().is_empty());
        assert!(matches!(workers.replace(0, 0), Err(Error::Closed)));
        drop(worker);
    }

    #[test]
    fn a_worker_over_its_memory_limit_is_killed_and_the_ending_says_so() {
        // Any shell uses more than a byte.
        let limit = MemoryLimit::new(1, Some("1B".into()));
        let workers = Workers::start(echoing(), 1, 1, Some(limit)).expect("a worker starts");
        let worker = workers.worker(0, 0).expect("running");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !worker.over_memory() && std::time::Instant::now() < deadline {
            std::thread::sleep(MEMORY_POLL);
        }
        assert!(worker.exchange(0, &[vec![0; 10].into()]).is_err(), "killed");
        drop(worker);
        let why = workers.replace(0, 0).expect("replaced");
        assert!(why.contains("over its memory_limit of 1B"), "{why}");
    }
}
