//! Moving a retiring worker's values to the workers that stay, on in-thread fake workers that keep
//! values in a map and log each request, with no processes or sleeps.

use std::collections::HashMap;
use std::sync::Arc;

use belated_cluster::directory::{Directory, Held, Kept};
use belated_cluster::resize::{Moved, MOVE_BATCH_BYTES};
use belated_cluster::wire::{Frame, FETCH, RUN};
use belated_cluster::{Cluster, Error, Transport};
use parking_lot::Mutex;

/// The call a destination runs after storing a batch.
const STORE: &[u8] = b"store";

#[derive(Default)]
struct Worker {
    store: HashMap<u64, Vec<u8>>,
    dead: bool,
    /// Whether it fails the store call (as a worker whose unpickling of a value fails would).
    refuses: bool,
}

struct Fakes {
    directory: Arc<Directory>,
    workers: Vec<Mutex<Worker>>,
    /// `(worker, op, ids it stored or was asked for)` per request, in order.
    log: Mutex<Vec<(usize, u64, Vec<u64>)>>,
}

fn words(frame: &Frame) -> Vec<u64> {
    let Frame::Bytes(bytes) = frame else {
        panic!("no segments here")
    };
    bytes
        .chunks_exact(8)
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        .collect()
}

impl Transport for Fakes {
    fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }

    fn exchange(
        &self,
        worker: usize,
        generation: u64,
        _connection: usize,
        frames: &[Frame],
    ) -> Result<Vec<Frame>, Error> {
        let mut state = self.workers[worker].lock();
        if state.dead || self.directory.generation(worker) != generation {
            return Err(Error::Lost);
        }
        let header = words(&frames[0]);
        let rest = &header[2 + header[1] as usize..];
        if header[0] == FETCH {
            let ids = rest[1..1 + rest[0] as usize].to_vec();
            let values = ids
                .iter()
                .map(|id| state.store[id].clone().into())
                .collect();
            self.log.lock().push((worker, FETCH, ids));
            return Ok(values);
        }
        assert_eq!(header[0], RUN);
        assert_eq!(rest[1..3], [0, 1], "keeps nothing, one block");
        let count = rest[3] as usize;
        let ids = rest[4..4 + count].to_vec();
        assert_eq!(rest[4 + count] as usize, count, "a frame per value");
        for (id, frame) in ids.iter().zip(&frames[1..]) {
            let Frame::Bytes(value) = frame else {
                panic!("bytes")
            };
            state.store.insert(*id, value.clone());
        }
        assert!(matches!(&frames[1 + count], Frame::Bytes(call) if call == STORE));
        self.log.lock().push((worker, RUN, ids));
        Ok(vec![Frame::from(if state.refuses {
            b"no".to_vec()
        } else {
            b"ok".to_vec()
        })])
    }

    fn receive(&self, _: usize, _: u64, _: usize) -> Result<Vec<Frame>, Error> {
        unreachable!("no batches")
    }

    fn kill(&self, worker: usize, _generation: u64) {
        self.workers[worker].lock().dead = true;
    }

    fn killed(&self, worker: usize, _generation: u64) -> bool {
        self.workers[worker].lock().dead
    }

    fn replace(&self, _: usize, _: u64) -> Result<String, Error> {
        unreachable!("nobody replaces")
    }
}

fn cluster(workers: usize) -> Arc<Cluster<Fakes>> {
    let fakes = Fakes {
        directory: Arc::new(Directory::new(workers)),
        workers: (0..workers).map(|_| Mutex::default()).collect(),
        log: Mutex::default(),
    };
    Arc::new(Cluster::new(Arc::new(fakes), 1))
}

/// A value of `bytes` bytes (as its worker estimated it) kept by `worker`, holding `content`.
fn keep(cluster: &Cluster<Fakes>, worker: usize, bytes: u64, content: &str) -> Arc<Kept> {
    let fakes = cluster.transport();
    let id = fakes.directory.new_id();
    let stored = content.as_bytes().to_vec();
    fakes.workers[worker].lock().store.insert(id, stored);
    Kept::new(&fakes.directory, id, worker, 0, bytes)
}

fn holders(value: &Arc<Kept>, cluster: &Cluster<Fakes>) -> Vec<usize> {
    let held: Held<()> = Held {
        local: None,
        remote: Some(Arc::clone(value)),
        sent: None,
    };
    held.holders(cluster.transport().directory())
}

/// What `to` holds of `value`, from the copy recorded for it.
fn content_in(value: &Arc<Kept>, cluster: &Cluster<Fakes>, to: usize) -> String {
    let fakes = cluster.transport();
    let copy = value.live_copies(&fakes.directory);
    let copy = copy.iter().find(|c| c.worker == to).expect("a copy there");
    String::from_utf8(fakes.workers[to].lock().store[&copy.id].clone()).unwrap()
}

fn ok(reply: &[Frame]) -> bool {
    matches!(&reply[0], Frame::Bytes(b) if b == b"ok")
}

#[test]
fn a_retiring_workers_values_go_to_the_staying_ones_from_it_not_from_the_parent() {
    let cluster = cluster(3);
    let small = keep(&cluster, 2, 10, "small");
    let large = keep(&cluster, 2, 30, "large");
    let elsewhere = keep(&cluster, 1, 8, "elsewhere");
    let copied = keep(&cluster, 2, 8, "copied");
    copied.add_copy(keep(&cluster, 0, 8, "copied"));
    let values = [
        small.clone(),
        large.clone(),
        elsewhere.clone(),
        copied.clone(),
    ];
    let store = [Frame::from(STORE.to_vec())];
    let moved = cluster.move_off(2, &values, &store, ok);
    assert_eq!(moved, Moved { moved: 2, lost: 0 });
    assert_eq!(cluster.stats().transferred(), 2);
    cluster.transport().directory.shrink(2);
    // The larger to worker 0, the smaller to worker 1: spread, not piled on one.
    assert_eq!(holders(&large, &cluster), [0]);
    assert_eq!(holders(&small, &cluster), [1]);
    assert_eq!(content_in(&large, &cluster, 0), "large");
    assert_eq!(content_in(&small, &cluster, 1), "small");
    assert_eq!(
        holders(&elsewhere, &cluster),
        [1],
        "a staying worker's stays"
    );
    assert_eq!(holders(&copied, &cluster), [0], "a copy already stays");
    let log = cluster.transport().log.lock().clone();
    let ops: Vec<(usize, u64)> = log.iter().map(|(w, op, _)| (*w, *op)).collect();
    assert_eq!(
        ops,
        [(2, FETCH), (0, RUN), (2, FETCH), (1, RUN)],
        "each fetched from the retiring worker, then stored where it goes"
    );
    // Dropping the last handle releases the moved copy from the worker that holds it now.
    drop((values, large));
    assert_eq!(cluster.transport().directory.take_releases(0).len(), 1);
}

#[test]
fn values_move_in_bounded_batches_and_a_dead_or_refusing_worker_moves_nothing() {
    let cluster = cluster(3);
    let half = MOVE_BATCH_BYTES / 2 + 1;
    let values: Vec<_> = (0..3)
        .map(|i| keep(&cluster, 1, half, &format!("v{i}")))
        .collect();
    let store = [Frame::from(STORE.to_vec())];
    assert_eq!(cluster.move_off(1, &values, &store, ok).moved, 3);
    let log = cluster.transport().log.lock().clone();
    let fetches: Vec<usize> = log
        .iter()
        .filter(|(_, op, _)| *op == FETCH)
        .map(|(_, _, ids)| ids.len())
        .collect();
    assert_eq!(fetches, [1, 1, 1], "two would go over the batch's bytes");

    let cluster = self::cluster(3);
    let lost = keep(&cluster, 2, 8, "lost");
    let refused = keep(&cluster, 1, 8, "refused");
    cluster.transport().kill(2, 0);
    cluster.transport().workers[0].lock().refuses = true;
    let moved = cluster.move_off(1, &[lost.clone(), refused.clone()], &store, ok);
    assert_eq!(moved, Moved { moved: 0, lost: 1 });
    assert_eq!(holders(&refused, &cluster), [1], "still where it was");
    assert_eq!(cluster.stats().transferred(), 0);
}

#[test]
fn a_value_whose_workers_were_all_retired_is_counted_lost() {
    let cluster = cluster(2);
    let value = keep(&cluster, 1, 8, "gone");
    cluster.transport().directory.shrink(1);
    let store = [Frame::from(STORE.to_vec())];
    let moved = cluster.move_off(1, &[value], &store, ok);
    assert_eq!(moved, Moved { moved: 0, lost: 1 });
    assert!(cluster.transport().log.lock().is_empty());
}

#[test]
fn a_broadcast_copies_a_value_to_every_worker_without_it_from_one_that_has_it() {
    let cluster = cluster(3);
    let value = keep(&cluster, 1, 8, "everywhere");
    value.add_copy(keep(&cluster, 2, 8, "everywhere"));
    let store = [Frame::from(STORE.to_vec())];
    let copied = cluster.replicate(std::slice::from_ref(&value), &store, ok);
    assert_eq!(copied, Moved { moved: 1, lost: 0 });
    assert_eq!(holders(&value, &cluster), [1, 2, 0]);
    assert_eq!(content_in(&value, &cluster, 0), "everywhere");
    let log = cluster.transport().log.lock().clone();
    let ops: Vec<(usize, u64)> = log.iter().map(|(w, op, _)| (*w, *op)).collect();
    assert_eq!(ops, [(1, FETCH), (0, RUN)]);
    assert_eq!(
        cluster.replicate(&[value], &store, ok),
        Moved::default(),
        "once"
    );
}
