//! Moving the values kept by workers that a scale down retires to the workers that stay, as
//! distributed's `retire_workers` does before it closes a worker; and copying values to every
//! worker (`scatter(broadcast=True)`), the same way.
//!
//! Policy and invariants:
//! - Only values no staying worker holds move; each goes to one staying worker
//!   ([`destinations`]: the largest first, each to the worker that has received the fewest bytes
//!   of this move, the lowest index on a tie), so the move spreads them rather than piling them
//!   on worker 0. Deterministic: the same values and sizes give the same destinations.
//! - A value goes from its worker to its destination as a transfer between computations' tasks
//!   does: fetched from the retiring worker, handed on as it came (its large buffers are
//!   shared-memory segments, mapped, not copied), stored by the destination under a new id and
//!   recorded as a copy of the original, so every handle of it finds it there. Moves go in
//!   batches of at most [`MOVE_BATCH_BYTES`] from one worker to one other: the parent never holds
//!   more than one batch, however much the retiring workers keep.
//! - Both requests use the workers' fetch connection, so a move waits for no task.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use crate::directory::Kept;
use crate::error::Error;
use crate::runner::{Cluster, Transport};
use crate::wire::{self, Frame, RUN};

/// Per (source worker, destination), the `(original, source copy)` pairs to send, in order.
type Routes<'a> = BTreeMap<(usize, usize), Vec<&'a (Arc<Kept>, Arc<Kept>)>>;

/// At most this many bytes of values go in one move from one worker to another (a single larger
/// value goes alone).
pub const MOVE_BATCH_BYTES: u64 = 64 << 20;

/// What a move did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Values now held by a staying worker that were not before.
    pub moved: usize,
    /// Values whose every holder died before they could move: used again, they are recomputed.
    pub lost: usize,
}

/// The staying worker (of `0..staying`) each value of `bytes` goes to: the largest first, each to
/// the worker that has received the fewest bytes so far (the lowest index on a tie).
pub fn destinations(bytes: &[u64], staying: usize) -> Vec<usize> {
    assert!(staying > 0, "a move needs a worker that stays");
    let mut order: Vec<usize> = (0..bytes.len()).collect();
    order.sort_by_key(|&at| std::cmp::Reverse(bytes[at]));
    let mut received = vec![0u64; staying];
    let mut to = vec![0; bytes.len()];
    for at in order {
        let least = (0..staying)
            .min_by_key(|&worker| (received[worker], worker))
            .expect("one worker at least");
        received[least] += bytes[at];
        to[at] = least;
    }
    to
}

impl<T: Transport> Cluster<T> {
    /// Moves the values among `values` (originals, as their handles hold them) that only workers
    /// `staying..` hold to workers `0..staying`. `store` is the encoded call each destination runs
    /// after storing a batch (one that does nothing), and `stored` tells from its reply whether it
    /// did: a batch refused stays where it was, uncounted.
    pub fn move_off(
        &self,
        staying: usize,
        values: &[Arc<Kept>],
        store: &[Frame],
        stored: impl Fn(&[Frame]) -> bool,
    ) -> Moved {
        let directory = self.transport().directory();
        let mut moved = Moved::default();
        let mut sources = Vec::new();
        for value in values {
            let live = value.live_copies(directory);
            if live.iter().any(|copy| copy.worker < staying) {
                continue;
            }
            match live.into_iter().next() {
                Some(source) => sources.push((Arc::clone(value), source)),
                None => moved.lost += 1,
            }
        }
        let bytes: Vec<u64> = sources.iter().map(|(_, source)| source.bytes).collect();
        // Per retiring worker and destination, the values, in the order they were given.
        let mut routes: Routes<'_> = BTreeMap::new();
        for (pair, to) in sources.iter().zip(destinations(&bytes, staying)) {
            routes.entry((pair.1.worker, to)).or_default().push(pair);
        }
        let sent = self.send(routes, store, &stored);
        Moved {
            moved: sent.moved,
            lost: moved.lost + sent.lost,
        }
    }

    /// Copies each of `values` to every live worker that holds none, from a worker that does
    /// (`scatter(broadcast=True)`); as [`Cluster::move_off`], `store` and `stored` store them.
    pub fn replicate(
        &self,
        values: &[Arc<Kept>],
        store: &[Frame],
        stored: impl Fn(&[Frame]) -> bool,
    ) -> Moved {
        let directory = self.transport().directory();
        let mut lost = 0;
        let mut sources = Vec::new();
        for value in values {
            let live = value.live_copies(directory);
            let Some(source) = live.first() else {
                lost += 1;
                continue;
            };
            for to in 0..self.workers() {
                if live.iter().all(|copy| copy.worker != to) {
                    sources.push(((Arc::clone(value), Arc::clone(source)), to));
                }
            }
        }
        let mut routes: Routes<'_> = BTreeMap::new();
        for (pair, to) in &sources {
            routes.entry((pair.1.worker, *to)).or_default().push(pair);
        }
        let sent = self.send(routes, store, &stored);
        Moved {
            moved: sent.moved,
            lost: lost + sent.lost,
        }
    }

    /// Sends each route's values, in batches.
    fn send(
        &self,
        routes: Routes<'_>,
        store: &[Frame],
        stored: &impl Fn(&[Frame]) -> bool,
    ) -> Moved {
        let mut moved = Moved::default();
        for ((_, to), pairs) in routes {
            for batch in batches(&pairs) {
                match self.move_batch(batch, to, store, stored) {
                    Ok(true) => moved.moved += batch.len(),
                    Ok(false) => {}
                    Err(_) => moved.lost += batch.len(),
                }
            }
        }
        moved
    }

    /// Moves one batch of `(original, source copy)` pairs to worker `to`: whether `to` stored them,
    /// or [`Error::Lost`] if their worker died first.
    fn move_batch(
        &self,
        batch: &[&(Arc<Kept>, Arc<Kept>)],
        to: usize,
        store: &[Frame],
        stored: &impl Fn(&[Frame]) -> bool,
    ) -> Result<bool, Error> {
        let directory = self.transport().directory();
        let source = &batch[0].1;
        let ids: Vec<u64> = batch.iter().map(|(_, copy)| copy.id).collect();
        let fetched = self.fetch(source.worker, source.generation, &ids)?;
        let copy_ids: Vec<u64> = batch.iter().map(|_| directory.new_id()).collect();
        // The result id is unused: the call keeps nothing and sends nothing back.
        let mut words = vec![directory.new_id(), 0, 1, ids.len() as u64];
        words.extend(&copy_ids);
        words.push(fetched.len() as u64);
        let generation = directory.generation(to);
        let releases = directory.take_releases(to);
        let mut request = vec![wire::header(RUN, &releases, &words).into()];
        request.extend(fetched);
        request.extend(store.iter().cloned());
        let reply = self
            .transport()
            .exchange(to, generation, self.threads_per_worker(), &request);
        if !reply.is_ok_and(|reply| stored(&reply)) {
            return Ok(false);
        }
        for ((original, copy), id) in batch.iter().zip(copy_ids) {
            original.add_copy(Kept::new(directory, id, to, generation, copy.bytes));
        }
        self.stats()
            .transferred
            .fetch_add(batch.len() as u64, SeqCst);
        Ok(true)
    }
}

/// `pairs` cut into runs of at most [`MOVE_BATCH_BYTES`] (a larger value alone).
fn batches<'a, V>(pairs: &'a [&'a (V, Arc<Kept>)]) -> Vec<&'a [&'a (V, Arc<Kept>)]> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (at, (_, copy)) in pairs.iter().enumerate() {
        if at > start && bytes + copy.bytes > MOVE_BATCH_BYTES {
            batches.push(&pairs[start..at]);
            (start, bytes) = (at, 0);
        }
        bytes += copy.bytes;
    }
    if start < pairs.len() {
        batches.push(&pairs[start..]);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_spread_over_the_staying_workers_largest_first() {
        assert_eq!(destinations(&[10, 30, 20, 5], 2), [1, 0, 1, 0]);
        assert_eq!(destinations(&[8, 8, 8], 1), [0, 0, 0]);
        assert_eq!(destinations(&[], 3), Vec::<usize>::new());
        assert_eq!(
            destinations(&[1, 1, 1], 3),
            [0, 1, 2],
            "ties to the lowest index"
        );
    }
}
