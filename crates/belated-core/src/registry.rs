//! Pools shared by the computations that ask for the same kind and size, kept within bounds.
//!
//! Policy:
//! - A request for a kind and size reuses the pool kept for it, else starts one and keeps it.
//! - At most [`KEPT_POOLS`] pools are kept, holding at most [`kept_threads`] threads between them. Past
//!   either bound the least recently used pools are let go of, never the one just asked for (so one
//!   pool larger than the thread bound is still reused while it is the latest).
//! - A pool let go of ends when its last user does: its threads stop once their current tasks end.
//!   Nobody waits for them, so letting go of a pool never blocks on a task of a cancelled computation
//!   that is still running there.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use crate::ThreadPool;

/// How many pools a registry keeps at most.
pub const KEPT_POOLS: usize = 4;

/// How many threads a registry's pools may hold between them: four per core, and at least 64.
pub fn kept_threads() -> usize {
    static KEPT: OnceLock<usize> = OnceLock::new();
    *KEPT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (4 * cores).max(64)
    })
}

/// Thread pools by key (a kind of worker and a size), kept for reuse within the bounds of the module's
/// policy, most recently used last.
#[derive(Debug)]
pub struct PoolRegistry<K> {
    kept: Mutex<Vec<(K, Arc<ThreadPool>)>>,
}

impl<K> Default for PoolRegistry<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> PoolRegistry<K> {
    /// An empty registry; `const`, so it can be a `static`.
    pub const fn new() -> Self {
        PoolRegistry {
            kept: Mutex::new(Vec::new()),
        }
    }
}

impl<K: PartialEq> PoolRegistry<K> {
    /// The pool kept for `key`, or a new one from `start`, kept in its place.
    pub fn get<E>(
        &self,
        key: K,
        start: impl FnOnce() -> Result<ThreadPool, E>,
    ) -> Result<Arc<ThreadPool>, E> {
        let (pool, released) = {
            let mut kept = self.kept.lock();
            let entry = match kept.iter().position(|(k, _)| *k == key) {
                Some(i) => kept.remove(i),
                None => (key, Arc::new(start()?.detach_on_drop())),
            };
            let pool = Arc::clone(&entry.1);
            kept.push(entry);
            let mut threads: usize = kept.iter().map(|(_, pool)| pool.threads()).sum();
            let mut over = 0;
            while kept.len() - over > 1
                && (kept.len() - over > KEPT_POOLS || threads > kept_threads())
            {
                threads -= kept[over].1.threads();
                over += 1;
            }
            let released: Vec<_> = kept.drain(..over).collect();
            (pool, released)
        };
        drop(released);
        Ok(pool)
    }

    /// Lets go of the pool kept for `key`, if any, so the next [`PoolRegistry::get`] starts a new one:
    /// for a pool whose threads may be stuck in tasks of a cancelled computation. It ends once its
    /// last computation does, and its threads once their tasks return.
    pub fn let_go(&self, key: &K) -> Option<Arc<ThreadPool>> {
        let mut kept = self.kept.lock();
        let at = kept.iter().position(|(k, _)| k == key)?;
        Some(kept.remove(at).1)
    }

    /// Lets go of the pool kept for `key` if it is `pool`: a computation stopped on it must not let
    /// go of a newer pool that another one started for the same key meanwhile.
    pub fn let_go_of(&self, key: &K, pool: &Arc<ThreadPool>) {
        let mut kept = self.kept.lock();
        if let Some(at) = kept
            .iter()
            .position(|(k, kept)| k == key && Arc::ptr_eq(kept, pool))
        {
            let released = kept.remove(at);
            drop(kept);
            drop(released);
        }
    }

    /// Lets go of every kept pool and hands them over (to shut down, or to forget after a `fork()`).
    pub fn take_all(&self) -> Vec<Arc<ThreadPool>> {
        self.kept.lock().drain(..).map(|(_, pool)| pool).collect()
    }

    /// How many pools are kept, and their threads between them.
    pub fn kept(&self) -> (usize, usize) {
        let kept = self.kept.lock();
        (
            kept.len(),
            kept.iter().map(|(_, pool)| pool.threads()).sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PlainHost;

    fn start(threads: usize) -> impl FnOnce() -> std::io::Result<ThreadPool> {
        move || ThreadPool::new(threads, Arc::new(PlainHost))
    }

    #[test]
    fn a_pool_let_go_of_is_replaced_by_the_next_get() {
        let registry = PoolRegistry::new();
        let one = registry.get(1, start(1)).unwrap();
        assert!(Arc::ptr_eq(&one, &registry.let_go(&1).unwrap()));
        assert!(registry.let_go(&1).is_none());
        assert!(!Arc::ptr_eq(&one, &registry.get(1, start(1)).unwrap()));
    }

    #[test]
    fn a_pool_is_reused_by_key_and_the_least_recently_used_go_first() {
        let registry = PoolRegistry::new();
        let one = registry.get(1, start(1)).unwrap();
        assert!(Arc::ptr_eq(&one, &registry.get(1, start(1)).unwrap()));
        for size in 2..=KEPT_POOLS + 1 {
            registry.get(size, start(1)).unwrap();
        }
        assert_eq!(registry.kept().0, KEPT_POOLS);
        assert!(
            !Arc::ptr_eq(&one, &registry.get(1, start(1)).unwrap()),
            "1 was let go of"
        );
    }

    #[test]
    fn kept_threads_are_bounded_but_the_latest_pool_stays() {
        let registry = PoolRegistry::new();
        for size in 1..=40 {
            registry.get(size, start(size)).unwrap();
            let (pools, threads) = registry.kept();
            assert!(pools <= KEPT_POOLS);
            assert!(
                threads <= kept_threads().max(size),
                "{threads} threads kept"
            );
        }
        let big = kept_threads() + 1;
        let pool = registry.get(big, start(big)).unwrap();
        assert_eq!(registry.kept(), (1, big));
        assert!(Arc::ptr_eq(&pool, &registry.get(big, start(big)).unwrap()));
    }

    #[test]
    fn a_pool_let_go_of_while_in_use_lives_until_its_user_is_done() {
        let registry = PoolRegistry::new();
        let busy = registry.get(0, start(2)).unwrap();
        for size in 1..=KEPT_POOLS {
            registry.get(size, start(1)).unwrap();
        }
        assert_eq!(busy.threads(), 2, "still running for its user");
        assert_eq!(Arc::strong_count(&busy), 1);
    }
}
