//! How many threads a job lets run its tasks when more threads need not mean faster.
//!
//! Task bodies that hold a lock every thread needs (Python's interpreter lock, for numpy on small
//! chunks or pandas) run no faster on two threads than on one, and handing the lock back and forth
//! costs 40–60% (measured on dask.array and dask.dataframe graphs, issue 14). Whether a task holds it
//! is not known before it runs, so [`Ramp`] measures: it starts with every thread, counts finished
//! tasks per window of time, and compares with one thread fewer, then one fewer again while fewer
//! win (or one more while more win). More threads must win by [`GAIN`] to be kept, since each window
//! runs different tasks and the extra threads cost the machine, and must keep more cores busy
//! ([`EXTRA_CORES`]): tasks holding the interpreter run about as fast on two threads as on one (the
//! engine's own work overlaps a little), so two threads' rate came out 15% ahead now and then on an
//! idle machine, keeping one core busy as one thread does. Settled, it compares again every
//! [`REPROBE`] windows (with one thread more, or fewer at the most), since a graph's phases differ
//! (building chunks, then reducing them).
//!
//! On a busy machine the OS gives the process more or less of the cores from one window to the
//! next, and rates and CPU time compared across windows then differ by half: a choice made there is
//! wrong now and then, until the next comparison.
//!
//! Fewer threads are tried only after a window in which the process kept at least [`MIN_BUSY`] of a
//! core busy: a lock every thread needs is held by a thread that runs, so tasks that contend for one
//! keep a core busy, where tasks that mostly wait (sleeping, on I/O) overlap their waits on every
//! thread and would lose a window's worth of tasks' time to the comparison.
//!
//! The clocks are the caller's (a [`Duration`] since any fixed start: of time, and of the process's
//! CPU time, read only at a window's end), so tests drive them by hand; a window ends only at a
//! finished task, after at least [`WINDOW`] and [`WINDOW_TASKS`] tasks, so a graph of a few long tasks
//! never leaves its starting count.
//!
//! Tasks may wait for each other (a barrier, a queue, an event set by another task): on fewer threads
//! than there are such tasks, the ones running would wait forever for ones that cannot start. A
//! caller that looks in now and then ([`Ramp::watch`]) lets every thread run again once no task has
//! finished for the ramp's stall bound, so any tasks that wait for each other run together in the
//! end, as on a pool without a ramp. Widening then loses no measurement: no task is finishing to
//! measure.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;

/// The shortest window a rate is measured over: several switch intervals of CPython (5 ms), so a
/// window sees the handoffs it is meant to catch.
pub const WINDOW: Duration = Duration::from_millis(20);
/// The fewest finished tasks a window counts, unless the ramp asks for more ([`Ramp::new`]).
pub const WINDOW_TASKS: u64 = 16;
/// How much faster, as a ratio of task rates, a count of threads must be than one fewer to be kept.
pub const GAIN: f64 = 1.15;
/// Windows spent at a settled count before it is compared with a neighbour again.
pub const REPROBE: u32 = 20;
/// The fewest cores, on average over a window, the process must keep busy for fewer threads to be
/// tried: tasks holding the interpreter keep one busy, or what the machine gives the process (a sixth
/// of one at load 12 on two cores); two threads of tasks that sleep 5 ms (1 ms) keep 0.02 (0.04).
pub const MIN_BUSY: f64 = 0.1;
/// The least each extra thread must add to the cores the process keeps busy, as a fraction of what
/// each of the fewer threads kept busy, for more threads to be kept: a third. Tasks that run side
/// by side add about a whole share each (tasks waiting on I/O as well, from a lower base); tasks
/// holding the interpreter add none on an idle machine, and on a core shared with a busy process a
/// tenth of one against a share of half (two threads take more of it from that process).
pub const EXTRA_CORES: f64 = 1.0 / 3.0;

/// The adaptive thread count of one job: read [`Ramp::allowed`] before taking a task, call
/// [`Ramp::task_done`] after each.
#[derive(Debug)]
pub struct Ramp {
    max: usize,
    /// The fewest finished tasks a window counts.
    window_tasks: u64,
    /// How long no task may finish before every thread runs again ([`Ramp::watch`]).
    stall: Duration,
    allowed: AtomicUsize,
    /// How many times the count went down ([`Ramp::narrowings`]); changed under `state`'s lock.
    narrowings: AtomicU64,
    state: Mutex<Window>,
    /// The count of finished tasks [`Ramp::watch`] last saw, and since when it has stood.
    watched: Mutex<(u64, Duration)>,
}

#[derive(Debug)]
struct Window {
    start: Duration,
    /// The process's CPU time at `start`.
    busy: Duration,
    done: u64,
    phase: Phase,
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Measuring the current count, to compare with a neighbour next.
    Measure,
    /// Measuring the current count against `threads`, measured at `rate` tasks per second while
    /// keeping `cores` busy.
    Compare {
        threads: usize,
        rate: f64,
        cores: f64,
    },
    /// At the chosen count for this many more windows.
    Settled { windows: u32 },
}

impl Ramp {
    /// A ramp over 1..=`max` threads, starting at `max`, its clocks starting at `now` and `busy`,
    /// whose windows count at least `window_tasks` tasks ([`WINDOW_TASKS`] at the fewest): a ramp
    /// that must leave tasks longer than a window's share of them on every thread asks for more.
    /// It lets every thread run again when no task finishes for `stall` ([`Ramp::watch`]).
    pub fn new(
        max: usize,
        window_tasks: u64,
        stall: Duration,
        now: Duration,
        busy: Duration,
    ) -> Self {
        let max = max.max(1);
        Ramp {
            max,
            window_tasks: window_tasks.max(WINDOW_TASKS),
            stall,
            watched: Mutex::new((0, now)),
            allowed: AtomicUsize::new(max),
            narrowings: AtomicU64::new(0),
            state: Mutex::new(Window {
                start: now,
                busy,
                done: 0,
                phase: if max == 1 {
                    Phase::Settled { windows: u32::MAX }
                } else {
                    Phase::Measure
                },
            }),
        }
    }

    /// How many threads may run tasks now.
    pub fn allowed(&self) -> usize {
        self.allowed.load(Relaxed)
    }

    /// Lets every thread run tasks again at once, measuring anew from `now` and `busy`: for a caller
    /// that sees a task long enough that running its graph's next ones one at a time would cost more
    /// than any window could save.
    pub fn widen(&self, now: Duration, busy: Duration) {
        if self.allowed() == self.max {
            return;
        }
        self.widen_locked(&mut self.state.lock(), now, busy);
    }

    /// How many times the count has gone down: read as a task starts, for
    /// [`Ramp::widen_for_task`] when it ends.
    pub fn narrowings(&self) -> u64 {
        self.narrowings.load(Relaxed)
    }

    /// [`Ramp::widen`] for a task long enough to, that started when [`Ramp::narrowings`] was
    /// `started`, unless the count went down since. A task that started while more threads ran may
    /// have spent its time waiting for a lock they held (Python's interpreter, handed between them
    /// every switch interval), which says nothing of the tasks to come: counted, it widened a ramp
    /// that had just gone down to one thread, window after window, and kept two threads handing the
    /// interpreter back and forth through a whole compute of builtin-function tasks. The price: a
    /// slow task that started before the count went down widens nothing, and the next one does.
    pub fn widen_for_task(&self, started: u64, now: Duration, busy: Duration) {
        if self.allowed() == self.max {
            return;
        }
        let mut window = self.state.lock();
        if self.narrowings() == started {
            self.widen_locked(&mut window, now, busy);
        }
    }

    fn widen_locked(&self, window: &mut Window, now: Duration, busy: Duration) {
        *window = Window {
            start: now,
            busy,
            done: 0,
            phase: Phase::Measure,
        };
        self.allowed.store(self.max, Relaxed);
    }

    /// Looks at `finished`, the job's count of finished tasks, at `now`: if it has not moved for the
    /// ramp's stall bound while fewer than every thread may run, lets every thread run again
    /// ([`Ramp::widen`], reading the process's CPU time from `busy`) and returns `true`, so the
    /// caller can wake the idle ones. The threads allowed are then each in one task that long (or
    /// out of work): they may be waiting for tasks that only another thread can start.
    pub fn watch(&self, finished: u64, now: Duration, busy: impl FnOnce() -> Duration) -> bool {
        let mut watched = self.watched.lock();
        if watched.0 != finished {
            *watched = (finished, now);
            return false;
        }
        if self.allowed() == self.max || now.saturating_sub(watched.1) < self.stall {
            return false;
        }
        self.widen(now, busy());
        true
    }

    /// Counts a finished task at `now`; at a window's end, moves the count as the rates say, reading
    /// the process's CPU time from `busy`.
    pub fn task_done(&self, now: Duration, busy: impl FnOnce() -> Duration) {
        self.tasks_done(1, now, busy);
    }

    /// [`Ramp::task_done`] for `tasks` tasks at once: a caller with many short tasks reports them in
    /// groups, paying the lock once a group.
    pub fn tasks_done(&self, tasks: u64, now: Duration, busy: impl FnOnce() -> Duration) {
        if self.max == 1 {
            return;
        }
        let mut window = self.state.lock();
        window.done += tasks;
        let span = now.saturating_sub(window.start);
        if window.done < self.window_tasks || span < WINDOW {
            return;
        }
        let rate = window.done as f64 / span.as_secs_f64();
        let busy = busy();
        let cores = busy.saturating_sub(window.busy).as_secs_f64() / span.as_secs_f64();
        window.start = now;
        window.busy = busy;
        window.done = 0;
        let current = self.allowed();
        let (next, phase) = match window.phase {
            Phase::Settled { windows } if windows > 0 => (
                current,
                Phase::Settled {
                    windows: windows - 1,
                },
            ),
            Phase::Settled { .. } | Phase::Measure if current == self.max && cores < MIN_BUSY => {
                (current, Phase::Measure)
            }
            Phase::Settled { .. } | Phase::Measure => {
                let neighbour = if current < self.max {
                    current + 1
                } else {
                    current - 1
                };
                (
                    neighbour,
                    Phase::Compare {
                        threads: current,
                        rate,
                        cores,
                    },
                )
            }
            Phase::Compare {
                threads,
                rate: other_rate,
                cores: other_cores,
            } => {
                let measured = (current, rate, cores);
                let other = (threads, other_rate, other_cores);
                let ((fewer, fewer_rate, fewer_cores), (more, more_rate, more_cores)) =
                    if threads < current {
                        (other, measured)
                    } else {
                        (measured, other)
                    };
                let share = fewer_cores / fewer as f64;
                let side_by_side =
                    more_cores - fewer_cores >= EXTRA_CORES * share * (more - fewer) as f64;
                let winner = if more_rate > fewer_rate * GAIN && side_by_side {
                    more
                } else {
                    fewer
                };
                // The count that won by moving away from `threads` is compared with the next one
                // the same way, so a ramp climbs (or descends) as far as it pays.
                let onward = if current > threads {
                    (current < self.max).then_some(current + 1)
                } else {
                    (current > 1).then_some(current - 1)
                };
                if let Some(onward) = onward.filter(|_| winner == current) {
                    (
                        onward,
                        Phase::Compare {
                            threads: current,
                            rate,
                            cores,
                        },
                    )
                } else {
                    (winner, Phase::Settled { windows: REPROBE })
                }
            }
        };
        window.phase = phase;
        if next < current {
            self.narrowings.fetch_add(1, Relaxed);
        }
        self.allowed.store(next, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stall bound of the tests' ramps.
    const STALL: Duration = Duration::from_millis(100);

    /// The time, and the process's CPU time, which grows by `cores` times the time.
    struct Clocks {
        now: Duration,
        busy: Duration,
        cores: f64,
    }

    impl Clocks {
        /// Clocks at zero, for tasks that keep one core busy (as ones holding the interpreter do).
        fn new() -> Self {
            Clocks {
                now: Duration::ZERO,
                busy: Duration::ZERO,
                cores: 1.0,
            }
        }

        fn ramp(&self, max: usize) -> Ramp {
            Ramp::new(max, WINDOW_TASKS, STALL, self.now, self.busy)
        }
    }

    /// Finishes `tasks` tasks evenly over `span` from the clocks' time, advancing them.
    fn run(ramp: &Ramp, clocks: &mut Clocks, tasks: u32, span: Duration) {
        let (start, busy) = (clocks.now, clocks.busy);
        for i in 1..=tasks {
            let elapsed = span * i / tasks;
            clocks.now = start + elapsed;
            clocks.busy = busy + elapsed.mul_f64(clocks.cores);
            ramp.task_done(clocks.now, || clocks.busy);
        }
    }

    /// The counts one window after another, each window's tasks and cores kept busy given by
    /// `load(threads)`, in tasks per window of [`WINDOW`].
    fn counts(max: usize, windows: usize, load: impl Fn(usize) -> (u32, f64)) -> Vec<usize> {
        let mut clocks = Clocks::new();
        let ramp = clocks.ramp(max);
        let mut seen = vec![ramp.allowed()];
        for _ in 0..windows {
            let (tasks, cores) = load(ramp.allowed());
            clocks.cores = cores;
            run(&ramp, &mut clocks, tasks, WINDOW);
            seen.push(ramp.allowed());
        }
        seen
    }

    /// Tasks that run side by side: each thread keeps a core busy and finishes `per_thread` tasks a
    /// window.
    fn side_by_side(per_thread: u32) -> impl Fn(usize) -> (u32, f64) {
        move |threads| (per_thread * threads as u32, threads as f64)
    }

    #[test]
    fn a_second_thread_that_slows_the_tasks_is_dropped_and_tried_again_later() {
        // Two threads finish fewer tasks than one, as with the interpreter lock contended.
        let r = REPROBE as usize;
        let seen = counts(2, r + 4, |t| (if t == 2 { 60 } else { 100 }, 1.0));
        assert_eq!(&seen[..3], &[2, 1, 1]);
        assert!(seen[2..r + 3].iter().all(|&t| t == 1), "{seen:?}");
        // The look again: one window at two threads, which lose again.
        assert_eq!(&seen[r + 3..], &[2, 1]);
    }

    #[test]
    fn threads_that_scale_are_kept() {
        let r = REPROBE as usize;
        let seen = counts(2, r + 4, side_by_side(100));
        assert_eq!(&seen[..3], &[2, 1, 2]);
        assert!(seen[2..r + 3].iter().all(|&t| t == 2), "{seen:?}");
        // At the most threads, the look again tries one fewer.
        assert_eq!(&seen[r + 3..], &[1, 2]);
    }

    #[test]
    fn a_small_gain_does_not_pay_for_another_thread() {
        let seen = counts(2, 2, |t| (if t == 2 { 110 } else { 100 }, t as f64));
        assert_eq!(seen, [2, 1, 1]);
    }

    #[test]
    fn more_threads_that_keep_no_more_cores_busy_are_not_kept_however_fast() {
        // Tasks holding the interpreter, two threads a fifth faster in their window: by chance, or by
        // the engine's own work overlapping the tasks a little.
        let seen = counts(2, 2, |t| (if t == 2 { 120 } else { 100 }, 1.0));
        assert_eq!(seen, [2, 1, 1]);
        // On a core shared with a busy process, two threads take more of it (0.58 of it against
        // 0.48, as measured): a fifth more tasks, a tenth of a core more.
        let seen = counts(2, 2, |t| if t == 2 { (120, 0.58) } else { (100, 0.48) });
        assert_eq!(seen, [2, 1, 1]);
    }

    #[test]
    fn more_threads_that_keep_more_cores_busy_and_run_faster_are_kept() {
        // Tasks that wait on I/O half the time add half a core each.
        let seen = counts(2, 2, |t| (100 * t as u32, 0.5 * t as f64));
        assert_eq!(seen, [2, 1, 2]);
        // Tasks holding the interpreter a third of the time.
        let seen = counts(2, 2, |t| if t == 2 { (160, 1.6) } else { (100, 1.0) });
        assert_eq!(seen, [2, 1, 2]);
    }

    #[test]
    fn a_ramp_descends_and_climbs_as_far_as_it_pays() {
        // First each thread fewer is faster, down to one; then the tasks change and up to three
        // threads pay, the fourth does not.
        let mut clocks = Clocks::new();
        let ramp = clocks.ramp(4);
        let mut seen = Vec::new();
        for window in 0..REPROBE as usize + 9 {
            let threads = ramp.allowed();
            // Tasks holding the interpreter keep one core busy; then tasks that run side by side.
            let tasks;
            (clocks.cores, tasks) = if window < 4 {
                (1.0, [0, 90, 80, 70, 50][threads])
            } else {
                (threads as f64, [0, 100, 190, 270, 280][threads])
            };
            run(&ramp, &mut clocks, tasks, WINDOW);
            seen.push(ramp.allowed());
        }
        let mut expected = vec![3, 2, 1];
        expected.extend(std::iter::repeat_n(1, REPROBE as usize + 1));
        expected.extend([2, 3, 4, 3, 3]);
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_window_needs_both_its_time_and_its_tasks() {
        let mut clocks = Clocks::new();
        let ramp = clocks.ramp(2);
        // Many tasks in less than a window's time, then a few in a long time: no window ends.
        run(&ramp, &mut clocks, 100, WINDOW / 2);
        assert_eq!(ramp.allowed(), 2);
        let mut clocks = Clocks::new();
        let long = clocks.ramp(2);
        run(&long, &mut clocks, WINDOW_TASKS as u32 - 1, WINDOW * 100);
        assert_eq!(long.allowed(), 2);
        run(&long, &mut clocks, 1, WINDOW);
        assert_eq!(long.allowed(), 1, "the window ends at its sixteenth task");
    }

    #[test]
    fn a_ramp_asking_for_more_tasks_a_window_keeps_every_thread_on_fewer() {
        let mut clocks = Clocks::new();
        let ramp = Ramp::new(2, 1000, STALL, clocks.now, clocks.busy);
        // Tasks a millisecond long: a window's time passes many times before its thousand tasks.
        for _ in 0..10 {
            run(&ramp, &mut clocks, 99, WINDOW * 5);
        }
        assert_eq!(ramp.allowed(), 2, "990 tasks end no window");
        ramp.tasks_done(10, clocks.now, || clocks.busy);
        assert_eq!(ramp.allowed(), 1, "the thousandth task ends the window");
    }

    #[test]
    fn widening_lets_every_thread_run_and_measures_anew() {
        let mut clocks = Clocks::new();
        let ramp = settled_on_one(&mut clocks);
        ramp.widen(clocks.now, clocks.busy);
        assert_eq!(ramp.allowed(), 2);
        run(&ramp, &mut clocks, 100, WINDOW);
        assert_eq!(
            ramp.allowed(),
            1,
            "a window measured two, and one is tried next"
        );
    }

    #[test]
    fn a_long_task_that_started_before_the_count_went_down_does_not_widen() {
        let mut clocks = Clocks::new();
        let ramp = clocks.ramp(2);
        let on_two = ramp.narrowings();
        run(&ramp, &mut clocks, 100, WINDOW);
        run(&ramp, &mut clocks, 100, WINDOW);
        assert_eq!(ramp.allowed(), 1);
        ramp.widen_for_task(on_two, clocks.now, clocks.busy);
        assert_eq!(ramp.allowed(), 1, "it may have waited for the other thread");
        ramp.widen_for_task(ramp.narrowings(), clocks.now, clocks.busy);
        assert_eq!(ramp.allowed(), 2, "one that started on one thread widens");
    }

    /// Two windows in which one thread did as well as two: the ramp settles on one.
    fn settled_on_one(clocks: &mut Clocks) -> Ramp {
        let ramp = clocks.ramp(2);
        run(&ramp, clocks, 100, WINDOW);
        run(&ramp, clocks, 100, WINDOW);
        assert_eq!(ramp.allowed(), 1);
        ramp
    }

    #[test]
    fn no_task_finishing_for_the_stall_bound_lets_every_thread_run_again() {
        // The one thread allowed runs a task that waits for another (a barrier): none finishes.
        let mut clocks = Clocks::new();
        let ramp = settled_on_one(&mut clocks);
        let finished = 200;
        assert!(!ramp.watch(finished, clocks.now, || clocks.busy));
        clocks.now += STALL / 2;
        assert!(!ramp.watch(finished, clocks.now, || clocks.busy));
        assert_eq!(ramp.allowed(), 1, "half the bound is not a stall");
        clocks.now += STALL / 2;
        assert!(ramp.watch(finished, clocks.now, || clocks.busy));
        assert_eq!(ramp.allowed(), 2);
        assert!(
            !ramp.watch(finished, clocks.now, || clocks.busy),
            "every thread runs already: nothing to wake"
        );
        // Measured anew from the widening: a window at two threads, then one is tried.
        run(&ramp, &mut clocks, 100, WINDOW);
        assert_eq!(ramp.allowed(), 1);
    }

    #[test]
    fn tasks_finishing_between_looks_keep_the_count() {
        let mut clocks = Clocks::new();
        let ramp = settled_on_one(&mut clocks);
        for finished in 200..210 {
            clocks.now += STALL * 2;
            assert!(!ramp.watch(finished, clocks.now, || clocks.busy));
            assert_eq!(ramp.allowed(), 1);
        }
        // The count stands from the last look on: a stall once the bound has passed since.
        clocks.now += STALL;
        assert!(ramp.watch(209, clocks.now, || clocks.busy));
    }

    #[test]
    fn a_ramp_on_every_thread_has_nothing_to_widen() {
        let mut clocks = Clocks::new();
        let ramp = clocks.ramp(2);
        clocks.now += STALL * 10;
        assert!(!ramp.watch(0, clocks.now, || clocks.busy));
        assert_eq!(ramp.allowed(), 2);
        let one = clocks.ramp(1);
        clocks.now += STALL * 10;
        assert!(!one.watch(0, clocks.now, || clocks.busy));
    }

    #[test]
    fn one_thread_stays_one() {
        let mut clocks = Clocks::new();
        let ramp = clocks.ramp(1);
        run(&ramp, &mut clocks, 1000, WINDOW * 10);
        assert_eq!(ramp.allowed(), 1);
        assert_eq!(clocks.ramp(0).allowed(), 1);
    }

    #[test]
    fn tasks_that_keep_no_core_busy_are_not_tried_on_fewer_threads() {
        // Tasks that mostly wait (sleeping, on I/O): however the windows' rates fall, fewer threads
        // would only lose a window's worth of tasks, and are not tried.
        let mut clocks = Clocks {
            cores: MIN_BUSY * 0.9,
            ..Clocks::new()
        };
        let ramp = clocks.ramp(2);
        for tasks in [100, 60, 30, 20] {
            run(&ramp, &mut clocks, tasks, WINDOW);
            assert_eq!(ramp.allowed(), 2);
        }
        // Then the tasks keep MIN_BUSY of a core busy: one thread fewer is tried at the window's end.
        clocks.cores = MIN_BUSY;
        run(&ramp, &mut clocks, 100, WINDOW);
        assert_eq!(ramp.allowed(), 1);
    }

    #[test]
    fn tasks_that_keep_no_core_busy_are_kept_on_every_thread_when_compared_again() {
        // Settled on all threads, the look again skips fewer while the tasks keep no core busy.
        let mut clocks = Clocks::new();
        let ramp = clocks.ramp(2);
        clocks.cores = 2.0;
        run(&ramp, &mut clocks, 100, WINDOW);
        clocks.cores = 1.0;
        run(&ramp, &mut clocks, 50, WINDOW);
        assert_eq!(ramp.allowed(), 2, "two threads won");
        clocks.cores = 0.0;
        for _ in 0..REPROBE * 2 {
            run(&ramp, &mut clocks, 100, WINDOW);
            assert_eq!(ramp.allowed(), 2);
        }
    }
}
