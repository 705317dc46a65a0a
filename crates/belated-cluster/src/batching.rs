//! How many ready tasks go to a worker in one message, as joblib's auto-batching decides: a round trip
//! to a worker process costs tens of microseconds, more than a trivial task itself, so while tasks
//! are fast several travel together; a slow task travels alone, so that it never waits behind others
//! on one worker while another worker idles.
//!
//! Policy:
//! - Until a task's cost is known, a batch is one task (a CPU-bound computation is never batched).
//! - A batch aims at [`TARGET`] of work, from the cost per task of the batches so far (an average
//!   that follows the latest), at most [`MAX_BATCH`] tasks, and at most twice the last batch: a batch
//!   grows step by step, so a change from fast to slow tasks costs little.
//! - A batch takes at most its share of the ready tasks, so every thread gets some.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// The work a batch aims at: long enough to hide a round trip, which on a loaded machine includes
/// waiting for a core to wake the thread that reads the reply, and short enough that the last
/// batches of a computation end together.
pub const TARGET: Duration = Duration::from_millis(20);

/// The most tasks one message carries.
pub const MAX_BATCH: usize = 1024;

/// The batch sizes of one computation, learned from its batches' durations. Shared by the threads
/// running it; their updates may interleave, which only blurs an estimate.
#[derive(Debug, Default)]
pub struct Batching {
    /// The cost of a task, in nanoseconds, with its share of the round trip; 0 until one ran.
    per_task: AtomicU64,
    /// The size of the last batch that ran.
    last: AtomicUsize,
}

impl Batching {
    /// How many tasks the next batch takes, with `ready` tasks waiting besides the one taken, on
    /// `threads` threads in all.
    pub fn size(&self, ready: usize, threads: usize) -> usize {
        let per_task = self.per_task.load(Relaxed);
        if per_task == 0 {
            return 1;
        }
        let wanted = usize::try_from(TARGET.as_nanos() as u64 / per_task).unwrap_or(MAX_BATCH);
        let grown = self.last.load(Relaxed).max(1).saturating_mul(2);
        let share = (ready + 1).div_ceil(threads.max(1));
        wanted.min(grown).min(share).clamp(1, MAX_BATCH)
    }

    /// How long a batch of `tasks` may run before its worker hands back the calls it has not
    /// started: a few times what it is expected to take, and at least twice the target, so that
    /// only a call that turns out slow (not a busy machine's delays) sets it off.
    pub fn overrun(&self, tasks: usize) -> Duration {
        let per_task = self.per_task.load(Relaxed);
        let expected = Duration::from_nanos(per_task.saturating_mul(tasks as u64));
        expected.saturating_mul(4).max(TARGET * 2)
    }

    /// Records that a batch of `tasks` took `elapsed`, round trip included.
    pub fn ran(&self, tasks: usize, elapsed: Duration) {
        let tasks = tasks.max(1);
        let latest = (elapsed.as_nanos() / tasks as u128).clamp(1, u128::from(u64::MAX)) as u64;
        let before = self.per_task.load(Relaxed);
        let estimate = if before == 0 {
            latest
        } else {
            before / 2 + latest / 2
        };
        self.per_task.store(estimate.max(1), Relaxed);
        self.last.store(tasks, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MICROSECOND: Duration = Duration::from_micros(1);

    #[test]
    fn tasks_travel_alone_until_their_cost_is_known() {
        assert_eq!(Batching::default().size(10_000, 2), 1);
    }

    #[test]
    fn fast_tasks_grow_their_batches_by_doubling_up_to_the_largest() {
        let batching = Batching::default();
        let mut sizes = Vec::new();
        for _ in 0..14 {
            let size = batching.size(10_000, 2);
            sizes.push(size);
            // A round trip of 50 µs and 3 µs per task.
            batching.ran(size, MICROSECOND * (50 + 3 * size as u32));
        }
        assert_eq!(sizes[..11], [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]);
        assert!(
            sizes[11..].iter().all(|&size| size == MAX_BATCH),
            "{sizes:?}"
        );
    }

    #[test]
    fn slow_tasks_stay_alone() {
        let batching = Batching::default();
        for _ in 0..5 {
            let size = batching.size(100, 2);
            assert_eq!(size, 1);
            batching.ran(size, Duration::from_millis(500));
        }
    }

    #[test]
    fn batches_aim_at_the_target_duration() {
        let batching = Batching::default();
        batching.ran(256, MICROSECOND * 256 * 100);
        // 20 ms of 100 µs tasks.
        assert_eq!(batching.size(10_000, 2), 200);
    }

    #[test]
    fn tasks_that_turn_slow_shrink_the_batches() {
        let batching = Batching::default();
        batching.ran(256, MICROSECOND * 256);
        assert_eq!(batching.size(10_000, 2), 512, "twice the last batch");
        batching.ran(256, Duration::from_millis(256));
        batching.ran(1, Duration::from_millis(1));
        assert_eq!(batching.size(10_000, 2), 2);
    }

    #[test]
    fn a_batch_overruns_at_four_times_its_expected_duration_and_never_below_twice_the_target() {
        let batching = Batching::default();
        assert_eq!(batching.overrun(100), TARGET * 2, "cost unknown");
        batching.ran(100, MICROSECOND * 100 * 100);
        assert_eq!(batching.overrun(10), TARGET * 2);
        assert_eq!(batching.overrun(1000), MICROSECOND * 100 * 1000 * 4);
    }

    #[test]
    fn a_batch_takes_at_most_its_share_of_the_ready_tasks() {
        let batching = Batching::default();
        batching.ran(128, MICROSECOND * 128);
        assert_eq!(batching.size(99, 4), 25);
        assert_eq!(batching.size(0, 4), 1);
    }
}
