//! Hostile values and observers: a panic in a `Drop`, a `Clone` or an observer must end as
//! [`Error::Panic`] for that computation, never as a hung compute, a dead worker or an unwinding
//! `compute()`. Every pool computation has a timeout, so a hang fails the test instead of stalling it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use belated::{delayed, Delayed, Error, Events, Options, ThreadPool};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A value whose destructor panics (unless a panic is already unwinding, which would abort).
#[derive(Clone)]
struct DropBomb(u64);

impl Drop for DropBomb {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("drop of bomb {}", self.0);
        }
    }
}

/// A value whose `Clone` panics.
struct CloneBomb(u64);

impl Clone for CloneBomb {
    fn clone(&self) -> Self {
        panic!("clone of bomb {}", self.0)
    }
}

/// Computes without letting a panic escape: an unwinding `compute()` fails the test with a message.
fn compute_caught<T: belated::Data>(x: &Delayed<T>, options: &Options) -> Result<T, Error> {
    match catch_unwind(AssertUnwindSafe(|| x.compute_with(options))) {
        Ok(result) => result,
        Err(_) => panic!("compute() unwound instead of returning an error"),
    }
}

fn assert_panic<T: std::fmt::Debug>(result: Result<T, Error>, says: &str) {
    match result {
        Err(err @ Error::Panic { .. }) => assert!(err.to_string().contains(says), "{err}"),
        other => panic!("expected a panic naming {says:?}, got {other:?}"),
    }
}

#[test]
fn a_panicking_drop_fails_the_compute_and_spares_the_worker() {
    let pool = ThreadPool::new(2).unwrap();
    let options = Options::new().pool(&pool).timeout(TIMEOUT);
    let bomb = delayed(|| DropBomb(1)).call();
    // Its consumers drop it: one its own copy, the other the engine's value, moved in.
    let dropped = bomb.map(|b: DropBomb| b.0) + bomb.map(|b: DropBomb| b.0);
    // Left in the engine when another task fails: the engine drops it itself.
    let fail = delayed(|| -> Result<u64, String> { Err("no".into()) }).try_call();
    let left_over = delayed(|b: DropBomb, f: u64| {
        std::mem::forget(b);
        f
    })
    .call(&bomb, &fail);
    // More computes than workers: a worker lost per compute would leave none.
    for options in [options.clone(), Options::inline()] {
        for _ in 0..3 {
            assert_panic(compute_caught(&dropped, &options), "drop of bomb 1");
            let err = compute_caught(&left_over, &options).unwrap_err();
            assert_eq!(err.key(), Some(fail.key().as_str()), "{err}");
        }
    }
    assert_eq!(
        compute_caught(&(Delayed::value(20) + 1), &options).unwrap(),
        21
    );
}

struct PanickingEvents {
    on_start: bool,
}

impl Events for PanickingEvents {
    fn task_started(&self, key: &str, _worker: Option<usize>) {
        if self.on_start {
            panic!("observer saw {key} start");
        }
    }

    fn task_finished(&self, key: &str, _worker: Option<usize>, _succeeded: bool) {
        panic!("observer saw {key} finish");
    }
}

#[test]
fn a_panicking_observer_fails_the_compute_and_spares_the_worker() {
    let pool = ThreadPool::new(2).unwrap();
    let x = delayed(|a: i64| a + 1).call(1);
    for on_start in [true, false] {
        let events = Arc::new(PanickingEvents { on_start });
        for options in [
            Options::new().pool(&pool).timeout(TIMEOUT),
            Options::inline(),
        ] {
            let options = options.events(events.clone());
            for _ in 0..3 {
                assert_panic(compute_caught(&x, &options), "observer saw lambda-");
            }
        }
    }
    let options = Options::new().pool(&pool).timeout(TIMEOUT);
    assert_eq!(compute_caught(&x, &options).unwrap(), 2);
}

#[test]
fn a_timeout_too_large_for_the_clock_means_no_deadline() {
    let x = Delayed::value(1i64) + 1;
    for options in [Options::inline(), Options::threads(2)] {
        let options = options.timeout(Duration::MAX);
        assert_eq!(compute_caught(&x, &options).unwrap(), 2);
    }
}

#[test]
fn a_panicking_clone_is_an_error_wherever_the_clone_happens() {
    let bomb = delayed(|| CloneBomb(3)).call();
    let as_input = bomb.map(|b: CloneBomb| b.0 + 1);
    let both = bomb.map(|b: CloneBomb| b.0) + bomb.map(|b: CloneBomb| b.0);
    for options in [Options::threads(2).timeout(TIMEOUT), Options::inline()] {
        assert_eq!(
            compute_caught(&as_input, &options).unwrap(),
            4,
            "moved, not cloned"
        );
        assert_panic(compute_caught(&both, &options), "clone of bomb 3");
        // Requested twice: the second copy is cloned on the calling thread.
        let twice = catch_unwind(AssertUnwindSafe(|| options.compute((&bomb, &bomb))))
            .unwrap_or_else(|_| panic!("compute() unwound instead of returning an error"));
        assert_panic(twice.map(|_| ()), "clone of bomb 3");
    }
}

/// Counts clones, to check that values move to their last consumer.
struct Counted(Arc<AtomicUsize>);

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, SeqCst);
        Counted(Arc::clone(&self.0))
    }
}

#[test]
fn values_move_to_their_last_consumer_and_are_cloned_only_for_earlier_ones() {
    let clones = Arc::new(AtomicUsize::new(0));
    let source = {
        let clones = Arc::clone(&clones);
        delayed(move || Counted(Arc::clone(&clones))).call()
    };
    let chain = (0..4).fold(source.clone(), |x, _| x.map(|c: Counted| c));
    let fan_in: Delayed<Vec<Counted>> = (0..5).map(|_| source.map(|c: Counted| c)).collect();
    let fan_out =
        (source.map(|_: Counted| 1) + source.map(|_: Counted| 2)) + source.map(|_: Counted| 3);
    for options in [Options::threads(2).timeout(TIMEOUT), Options::inline()] {
        clones.store(0, SeqCst);
        compute_caught(&chain, &options).unwrap();
        assert_eq!(clones.load(SeqCst), 0, "a chain moves its value along");
        compute_caught(&fan_in, &options).unwrap();
        assert_eq!(
            clones.load(SeqCst),
            4,
            "five consumers of the source: four clones"
        );
        clones.store(0, SeqCst);
        assert_eq!(compute_caught(&fan_out, &options).unwrap(), 6);
        assert_eq!(clones.load(SeqCst), 2, "three consumers: two clones");
    }
}

/// A parameter of type `Arc<T>` shares a `Delayed<T>` with its task: no consumer clones it, and one
/// that makes it mutable at its last use gets it without a clone.
#[test]
fn arc_parameters_share_values_instead_of_cloning_them() {
    let clones = Arc::new(AtomicUsize::new(0));
    let source = {
        let clones = Arc::clone(&clones);
        delayed(move || Counted(Arc::clone(&clones))).call()
    };
    let read = delayed(|c: Arc<Counted>| Arc::strong_count(&c.0));
    let readers: Delayed<Vec<usize>> = (0..5).map(|_| read.call(&source)).collect();
    let all = delayed(|parts: Vec<Arc<Counted>>| parts.len());
    let sources: Vec<Delayed<Counted>> = vec![source.clone(); 3];
    let mixed = read.call(&source) + source.map(|_: Counted| 0);
    let owned = delayed(|c: Arc<Counted>| Arc::unwrap_or_clone(c))
        .call(source.map(|c: Counted| c))
        .map(|_: Counted| 7);
    for options in [Options::threads(2).timeout(TIMEOUT), Options::inline()] {
        clones.store(0, SeqCst);
        assert_eq!(compute_caught(&readers, &options).unwrap().len(), 5);
        assert_eq!(compute_caught(&all.call(&sources), &options).unwrap(), 3);
        assert_eq!(compute_caught(&owned, &options).unwrap(), 7);
        assert_eq!(clones.load(SeqCst), 0, "shared, never cloned");
        compute_caught(&mixed, &options).unwrap();
        assert!(
            clones.load(SeqCst) <= 1,
            "the by-value consumer clones only if the reader still holds the value"
        );
    }
}

#[test]
fn a_compute_that_timed_out_cancels_its_running_tasks_token() {
    let pool = ThreadPool::new(1).unwrap();
    // The task must start before the deadline for the test to mean anything: longer deadlines until
    // it does, on however loaded a machine.
    for deadline_ms in [20, 200, 2000, 20_000] {
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let (started_tx, done_tx) = (Mutex::new(started_tx), Mutex::new(done_tx));
        let spin = delayed(move || {
            let token = belated::CancelToken::current().expect("a task has a token");
            started_tx.lock().unwrap().send(()).unwrap();
            let give_up = std::time::Instant::now() + TIMEOUT;
            while !token.is_cancelled() && std::time::Instant::now() < give_up {
                std::thread::yield_now();
            }
            done_tx.lock().unwrap().send(token.is_cancelled()).unwrap();
        })
        .call();
        let options = Options::new()
            .pool(&pool)
            .timeout(Duration::from_millis(deadline_ms));
        let result = spin.compute_with(&options);
        assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
        // Once cancelled, a task that had not started never will.
        if started_rx.recv_timeout(Duration::from_secs(1)).is_err() {
            continue;
        }
        let saw_cancel = done_rx.recv_timeout(TIMEOUT).unwrap();
        assert!(saw_cancel, "the engine cancelled the token on timeout");
        assert!(
            belated::CancelToken::current().is_none(),
            "no token outside a task"
        );
        return;
    }
    panic!("the task never started before its deadline");
}

/// Waits until `count` tasks have arrived, or the timeout; says whether they all met.
struct Rendezvous {
    arrived: Mutex<usize>,
    all: std::sync::Condvar,
}

impl Rendezvous {
    fn meet(&self, count: usize) -> bool {
        let mut arrived = self.arrived.lock().unwrap();
        *arrived += 1;
        self.all.notify_all();
        let (arrived, _) = self
            .all
            .wait_timeout_while(arrived, TIMEOUT, |arrived| *arrived < count)
            .unwrap();
        *arrived >= count
    }
}

#[test]
fn an_idle_worker_helps_with_a_graph_computed_inside_a_task() {
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let rendezvous = Arc::new(Rendezvous {
        arrived: Mutex::new(0),
        all: std::sync::Condvar::new(),
    });
    let outer = {
        let pool = Arc::clone(&pool);
        delayed(move || {
            let meet = {
                let rendezvous = Arc::clone(&rendezvous);
                delayed(move |_: u8| rendezvous.meet(2))
            };
            let inner: Delayed<(bool, bool)> = meet.call(0).zip(meet.call(1));
            inner.compute_with(&Options::new().pool(&pool)).unwrap()
        })
    }
    .call();
    let options = Options::new().pool(&pool).timeout(TIMEOUT);
    assert_eq!(
        outer.compute_with(&options).unwrap(),
        (true, true),
        "the two inner tasks ran at once"
    );
}

#[test]
fn every_worker_may_wait_for_a_graph_of_its_own_without_deadlock() {
    let pool = Arc::new(ThreadPool::new(2).unwrap());
    let outer: Vec<Delayed<u64>> = (0..6)
        .map(|i| {
            let pool = Arc::clone(&pool);
            delayed(move |i: u64| {
                let parts: Vec<Delayed<u64>> = (0..8)
                    .map(|j| delayed(|a: u64, b: u64| a * b).call(i, j))
                    .collect();
                let sum: Delayed<u64> = parts.iter().sum();
                sum.compute_with(&Options::new().pool(&pool)).unwrap()
            })
            .call(i)
        })
        .collect();
    let options = Options::new().pool(&pool).timeout(TIMEOUT);
    assert_eq!(
        options.compute(&outer).unwrap(),
        (0..6).map(|i| i * 28).collect::<Vec<_>>()
    );
}

#[test]
fn the_calling_thread_runs_its_own_computation_when_every_worker_is_busy() {
    let pool = ThreadPool::new(1).unwrap();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (busy_tx, busy_rx) = std::sync::mpsc::channel();
    let release_rx = Mutex::new(release_rx);
    let busy_tx = Mutex::new(busy_tx);
    let blocker = delayed(move || {
        busy_tx.lock().unwrap().send(()).unwrap();
        release_rx.lock().unwrap().recv_timeout(TIMEOUT).is_ok()
    })
    .call();
    let blocked = {
        let options = Options::new().pool(&pool).timeout(TIMEOUT);
        std::thread::spawn(move || blocker.compute_with(&options))
    };
    busy_rx.recv_timeout(TIMEOUT).unwrap();
    // The pool's only worker is busy: only the calling thread can run this graph.
    let here = std::thread::current().id();
    let seen = delayed(|_: u8| std::thread::current().id()).call(0);
    let on_caller = seen.map(move |id: std::thread::ThreadId| id == here);
    assert!(on_caller.compute_with(&Options::new().pool(&pool)).unwrap());
    release_tx.send(()).unwrap();
    assert!(blocked.join().unwrap().unwrap());
}
