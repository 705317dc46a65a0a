//! Where each value of a computation on worker processes lives: in which workers (and which
//! generation of each: a replaced worker's values are lost), how large it is, which copies other
//! workers hold, and which ids each worker may forget.
//!
//! Invariants:
//! - The live workers are `0..workers()`, within a room fixed at the start, so that a worker's
//!   generation is read without a lock while the cluster grows or shrinks. A worker retired by a
//!   shrink is a new generation: what it held is lost, as with a replacement, and a later grow
//!   starts a fresh worker at that index.
//! - A value kept by a worker is [`Kept`]; the last handle dropping queues its id for release by its
//!   worker (sent with that worker's next request, or at once by a cluster that releases promptly),
//!   unless the worker was replaced since (the value went with it) or the directory is closed.
//! - Copies other workers received hang off the original and are released with it.
//! - A task's input is found ([`Held::source`]) in its own worker first, then here in the parent,
//!   then in another live worker; otherwise it is [`Source::Lost`] and must be recomputed.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// The ids and generations of one cluster's workers.
#[derive(Debug)]
pub struct Directory {
    /// Each worker's generation, bumped when it is replaced or retired; one per worker the cluster
    /// has room for.
    generations: Vec<AtomicU64>,
    /// Ids each worker may forget, sent with its next request.
    releases: Vec<Mutex<Vec<u64>>>,
    /// How many workers are live: `0..live`.
    live: AtomicUsize,
    next_id: AtomicU64,
    closed: AtomicBool,
    /// Whether a release was queued since [`Self::wait_for_releases`] last returned, and its wakeup.
    queued: Mutex<bool>,
    wakeup: Condvar,
}

impl Directory {
    pub fn new(workers: usize) -> Self {
        Self::with_room(workers, workers)
    }

    /// A directory of `workers` live workers that may grow to `room`.
    pub fn with_room(workers: usize, room: usize) -> Self {
        let room = room.max(workers);
        Directory {
            generations: (0..room).map(|_| AtomicU64::new(0)).collect(),
            releases: (0..room).map(|_| Mutex::new(Vec::new())).collect(),
            live: AtomicUsize::new(workers),
            next_id: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            queued: Mutex::new(false),
            wakeup: Condvar::new(),
        }
    }

    /// How many workers are live (`0..workers()`).
    pub fn workers(&self) -> usize {
        self.live.load(SeqCst)
    }

    /// How many workers the cluster may grow to.
    pub fn room(&self) -> usize {
        self.generations.len()
    }

    /// Makes workers `workers()..to` live: they were started in their slots.
    pub fn grow(&self, to: usize) {
        assert!(to <= self.room(), "grown past its room");
        self.live.fetch_max(to, SeqCst);
    }

    /// Retires workers `to..workers()`: what they held is lost, as with a replacement, and requests
    /// meant for them fail. Their processes end once nobody uses them.
    pub fn shrink(&self, to: usize) {
        let live = self.live.fetch_min(to, SeqCst);
        for worker in to..live {
            self.replaced(worker);
        }
    }

    /// A fresh id for a value a worker will keep.
    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, SeqCst)
    }

    pub fn generation(&self, worker: usize) -> u64 {
        self.generations[worker].load(SeqCst)
    }

    /// Whether `copy` is still held: its worker was not replaced since it was made.
    pub fn alive(&self, copy: &Kept) -> bool {
        self.generation(copy.worker) == copy.generation
    }

    /// Records that `worker` was replaced: what it held is lost, and nothing is left to release.
    pub fn replaced(&self, worker: usize) {
        self.releases[worker].lock().clear();
        self.generations[worker].fetch_add(1, SeqCst);
    }

    /// The ids `worker` may forget, to send with its next request.
    pub fn take_releases(&self, worker: usize) -> Vec<u64> {
        std::mem::take(&mut *self.releases[worker].lock())
    }

    pub fn has_releases(&self, worker: usize) -> bool {
        !self.releases[worker].lock().is_empty()
    }

    /// Stops queueing releases: the workers are going away.
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
        let _queued = self.queued.lock();
        self.wakeup.notify_all();
    }

    /// Waits up to `timeout` until a release is queued or the directory is closed; whether one was.
    pub fn wait_for_releases(&self, timeout: Duration) -> bool {
        let mut queued = self.queued.lock();
        if !*queued && !self.is_closed() {
            self.wakeup.wait_for(&mut queued, timeout);
        }
        std::mem::take(&mut *queued)
    }

    fn queue_release(&self, worker: usize, id: u64) {
        self.releases[worker].lock().push(id);
        *self.queued.lock() = true;
        self.wakeup.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }
}

/// A value kept by a worker under `id`. Dropping the last handle queues its release.
#[derive(Debug)]
pub struct Kept {
    pub id: u64,
    pub worker: usize,
    pub generation: u64,
    /// About how many bytes the value holds, as its worker estimated it: what moving it would cost.
    pub bytes: u64,
    directory: Arc<Directory>,
    /// Copies other workers received (or recomputed), each released with this one.
    copies: Mutex<Vec<Arc<Kept>>>,
}

impl Kept {
    pub fn new(
        directory: &Arc<Directory>,
        id: u64,
        worker: usize,
        generation: u64,
        bytes: u64,
    ) -> Arc<Self> {
        Arc::new(Kept {
            id,
            worker,
            generation,
            bytes,
            directory: Arc::clone(directory),
            copies: Mutex::new(Vec::new()),
        })
    }

    /// Records another worker's copy of this value.
    pub fn add_copy(&self, copy: Arc<Kept>) {
        self.copies.lock().push(copy);
    }

    /// The copies of this value still held (this one first, then the others'), one per worker.
    pub fn live_copies(self: &Arc<Self>, directory: &Directory) -> Vec<Arc<Kept>> {
        let copies = self.copies.lock();
        let mut live: Vec<Arc<Kept>> = Vec::new();
        for copy in std::iter::once(self).chain(copies.iter()) {
            if directory.alive(copy) && live.iter().all(|other| other.worker != copy.worker) {
                live.push(Arc::clone(copy));
            }
        }
        live
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        let directory = &self.directory;
        if directory.alive(self) && !directory.is_closed() {
            directory.queue_release(self.worker, self.id);
        }
    }
}

/// A value built in the parent, as the tasks that need it see it (shared by all of them).
#[derive(Debug, Default)]
pub struct Sent {
    /// Its size, estimated when a task first needed it.
    pub bytes: OnceLock<u64>,
    /// Its frames, pickled for the first worker that needed it and sent as they are to the others:
    /// its large buffers are shared-memory segments, copied once however many workers map them.
    pub frames: OnceLock<Vec<crate::wire::Frame>>,
    /// The workers it was sent to, so that each receives a large value once per computation rather
    /// than with every call that needs it.
    copies: Mutex<Vec<Arc<Kept>>>,
}

impl Sent {
    pub fn add_copy(&self, copy: Arc<Kept>) {
        self.copies.lock().push(copy);
    }
}

/// A task's result as the engine holds it: here in the parent (`V`: outputs, and values built from
/// literals), in a worker, or both.
#[derive(Debug)]
pub struct Held<V> {
    pub local: Option<V>,
    pub remote: Option<Arc<Kept>>,
    /// For a value built here: what the tasks that need it learned of it.
    pub sent: Option<Arc<Sent>>,
}

impl<V: Clone> Clone for Held<V> {
    fn clone(&self) -> Self {
        Held {
            local: self.local.clone(),
            remote: self.remote.clone(),
            sent: self.sent.clone(),
        }
    }
}

/// Where a task running on a worker finds one of its inputs.
#[derive(Debug)]
pub enum Source<V> {
    /// In the parent: it travels with the call (or is sent once, if large).
    Here(V),
    /// Kept by the task's own worker, under this id.
    InMyWorker(u64),
    /// Kept by another live worker: fetched from it.
    Elsewhere(Arc<Kept>),
    /// Nowhere any more: its workers were replaced.
    Lost,
}

impl<V: Clone> Held<V> {
    /// A live copy of this value kept by a worker, to fetch it from; `None` if every worker that
    /// held it was replaced.
    pub fn kept_copy(&self, directory: &Directory) -> Option<Arc<Kept>> {
        let remote = self.remote.as_ref()?;
        let copies = remote.copies.lock();
        std::iter::once(remote)
            .chain(copies.iter())
            .find(|copy| directory.alive(copy))
            .cloned()
    }

    /// The workers holding a live copy of this value, the original's first.
    pub fn holders(&self, directory: &Directory) -> Vec<usize> {
        let Some(remote) = &self.remote else {
            return Vec::new();
        };
        let live = remote.live_copies(directory);
        live.iter().map(|copy| copy.worker).collect()
    }

    /// Whether this value is nowhere any more: not here, and its workers were replaced.
    pub fn is_lost(&self, directory: &Directory) -> bool {
        self.local.is_none() && self.kept_copy(directory).is_none()
    }

    /// Where a task on `worker` finds this value.
    pub fn source(&self, directory: &Directory, worker: usize) -> Source<V> {
        let mut alive_elsewhere = None;
        if let Some(remote) = &self.remote {
            let copies = remote.copies.lock();
            for candidate in std::iter::once(remote).chain(copies.iter()) {
                if !directory.alive(candidate) {
                    continue;
                }
                if candidate.worker == worker {
                    return Source::InMyWorker(candidate.id);
                }
                alive_elsewhere.get_or_insert_with(|| Arc::clone(candidate));
            }
        }
        if let Some(sent) = &self.sent {
            let copies = sent.copies.lock();
            let mine = copies
                .iter()
                .find(|copy| copy.worker == worker && directory.alive(copy));
            if let Some(copy) = mine {
                return Source::InMyWorker(copy.id);
            }
        }
        match (&self.local, alive_elsewhere) {
            (Some(local), _) => Source::Here(local.clone()),
            (None, Some(remote)) => Source::Elsewhere(remote),
            (None, None) => Source::Lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(directory: &Arc<Directory>, worker: usize, bytes: u64) -> Arc<Kept> {
        let id = directory.new_id();
        Kept::new(directory, id, worker, directory.generation(worker), bytes)
    }

    fn in_worker(copy: &Arc<Kept>) -> Held<&'static str> {
        Held {
            local: None,
            remote: Some(Arc::clone(copy)),
            sent: None,
        }
    }

    fn described(source: Source<&str>) -> String {
        match source {
            Source::Here(value) => format!("here {value}"),
            Source::InMyWorker(id) => format!("mine {id}"),
            Source::Elsewhere(copy) => format!("fetch {} from {}", copy.id, copy.worker),
            Source::Lost => "lost".to_string(),
        }
    }

    #[test]
    fn an_input_is_found_in_the_own_worker_then_here_then_elsewhere_else_lost() {
        let directory = Arc::new(Directory::new(3));
        let original = kept(&directory, 0, 100);
        let held = in_worker(&original);
        assert_eq!(described(held.source(&directory, 0)), "mine 0");
        assert_eq!(described(held.source(&directory, 1)), "fetch 0 from 0");
        original.add_copy(kept(&directory, 1, 100));
        assert_eq!(described(held.source(&directory, 1)), "mine 1");
        let returned = Held {
            local: Some("value"),
            ..held.clone()
        };
        assert_eq!(described(returned.source(&directory, 2)), "here value");
        assert_eq!(held.holders(&directory), [0, 1]);
        directory.replaced(0);
        assert_eq!(held.holders(&directory), [1], "only live copies hold it");
        assert_eq!(
            described(held.source(&directory, 2)),
            "fetch 1 from 1",
            "the copy outlives the original's worker"
        );
        directory.replaced(1);
        assert_eq!(described(held.source(&directory, 2)), "lost");
        assert_eq!(described(returned.source(&directory, 2)), "here value");
    }

    #[test]
    fn a_value_sent_once_is_found_in_the_workers_it_was_sent_to() {
        let directory = Arc::new(Directory::new(2));
        let sent = Arc::new(Sent::default());
        let held = Held {
            local: Some("big"),
            remote: None,
            sent: Some(Arc::clone(&sent)),
        };
        assert_eq!(described(held.source(&directory, 1)), "here big");
        sent.add_copy(kept(&directory, 1, 1 << 20));
        assert_eq!(described(held.source(&directory, 1)), "mine 0");
        assert_eq!(described(held.source(&directory, 0)), "here big");
    }

    #[test]
    fn dropping_the_last_handle_releases_the_value_and_its_copies_from_live_workers_only() {
        let directory = Arc::new(Directory::new(3));
        let original = kept(&directory, 0, 8);
        original.add_copy(kept(&directory, 1, 8));
        original.add_copy(kept(&directory, 2, 8));
        let handle = Arc::clone(&original);
        drop(original);
        assert!(
            (0..3).all(|w| !directory.has_releases(w)),
            "one handle left"
        );
        directory.replaced(2);
        drop(handle);
        assert_eq!(directory.take_releases(0), [0]);
        assert_eq!(directory.take_releases(1), [1]);
        assert!(
            directory.take_releases(2).is_empty(),
            "the replaced worker's value went with it"
        );
        assert!(
            directory.take_releases(0).is_empty(),
            "taken releases are sent once"
        );
    }

    #[test]
    fn a_waiter_learns_of_a_queued_release_once() {
        let directory = Arc::new(Directory::new(1));
        let copy = kept(&directory, 0, 8);
        let waiter = {
            let directory = Arc::clone(&directory);
            std::thread::spawn(move || directory.wait_for_releases(Duration::from_secs(60)))
        };
        drop(copy);
        assert!(waiter.join().unwrap(), "woken by the release");
        assert!(
            !directory.wait_for_releases(Duration::ZERO),
            "a release is announced once"
        );
        directory.close();
        assert!(
            !directory.wait_for_releases(Duration::from_secs(60)),
            "closed: no wait"
        );
    }

    #[test]
    fn a_retired_worker_loses_its_values_and_a_regrown_one_starts_empty() {
        let directory = Arc::new(Directory::with_room(2, 3));
        assert_eq!((directory.workers(), directory.room()), (2, 3));
        directory.grow(3);
        let original = kept(&directory, 2, 8);
        original.add_copy(kept(&directory, 0, 8));
        let held = in_worker(&original);
        let queued = kept(&directory, 2, 8);
        drop(queued);
        assert!(directory.has_releases(2));
        directory.shrink(2);
        assert_eq!(directory.workers(), 2);
        assert!(!directory.has_releases(2), "its releases went with it");
        assert_eq!(held.holders(&directory), [0], "the copy that stays");
        directory.grow(3);
        assert_eq!(directory.generation(2), 1);
        assert_eq!(described(held.source(&directory, 2)), "fetch 1 from 0");
        drop(held);
        drop(original);
        assert!(
            !directory.has_releases(2),
            "nothing to release in the fresh worker"
        );
        assert_eq!(directory.take_releases(0), [1]);
    }

    #[test]
    fn nothing_is_queued_for_release_once_closed() {
        let directory = Arc::new(Directory::new(1));
        let copy = kept(&directory, 0, 8);
        directory.close();
        drop(copy);
        assert!(!directory.has_releases(0));
    }
}
