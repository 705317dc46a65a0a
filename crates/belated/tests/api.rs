//! The public API end to end: building, operators, compute on collections, errors, schedulers.
//! Every computation on a pool runs with a timeout, so a hang fails the test instead of stalling it.

use std::num::ParseIntError;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use belated::{compute, compute_all, delayed, Delayed, Error, Options, Scheduler};

const TIMEOUT: Duration = Duration::from_secs(30);

fn pool(threads: usize) -> Options {
    Options::threads(threads).timeout(TIMEOUT)
}

fn square(x: i64) -> i64 {
    x * x
}

fn add3(a: i64, b: i64, c: i64) -> i64 {
    a + b + c
}

fn mean(values: Vec<f64>) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[test]
fn tutorial_example_1_computes_and_names_its_tasks() {
    let x_sq = delayed(square).call(3);
    let y_sq = delayed(square).call(4);
    let res = x_sq.clone() + y_sq;
    assert!(x_sq.key().starts_with("square-"), "{}", x_sq.key());
    assert_eq!(x_sq.name(), "square");
    assert_eq!(res.name(), "add");
    assert_eq!(res.dependencies(), 2);
    assert!(format!("{res:?}").starts_with("Delayed(\"add-"));
    assert_eq!(res.compute_with(&pool(4)).unwrap(), 25);
    assert_eq!(res.compute_with(&Options::inline()).unwrap(), 25);
    assert_eq!(res.compute().unwrap(), 25, "graphs can be computed again");
}

#[test]
fn arguments_mix_plain_and_delayed_values_up_to_six() {
    let a = delayed(square).call(2);
    let f = delayed(add3);
    assert_eq!(f.call(&a, 10, &a).compute().unwrap(), 18);
    assert_eq!(f.call(1, 2, 3).compute().unwrap(), 6);
    let six = delayed(
        |a: i64, b: u8, c: f64, d: String, e: Vec<i64>, g: (i64, i64)| {
            format!("{a} {b} {c} {d} {e:?} {g:?}")
        },
    );
    let text = six.call(a.clone(), 2u8, 0.5, "d".to_string(), vec![&a, &a], (1, 2));
    assert_eq!(text.name(), "lambda");
    assert_eq!(text.compute().unwrap(), "4 2 0.5 d [4, 4] (1, 2)");
}

#[test]
fn functions_of_no_arguments_are_sources() {
    let load = delayed(|| vec![1, 2, 3]).named("load");
    let data = load.call();
    assert_eq!(data.name(), "load");
    assert_eq!(data.map(|v: Vec<i32>| v.len()).compute().unwrap(), 3);
    let fail = delayed(|| -> Result<i32, String> { Err("no data".into()) }).try_call();
    assert!(fail.compute().unwrap_err().to_string().ends_with("no data"));
}

#[test]
fn lists_of_delayed_values_are_arguments_and_collect() {
    let corr = delayed(|x: Vec<f64>, i: usize| x[i] * 2.0);
    let row = vec![1.0, 2.0, 3.0];
    let parts: Vec<Delayed<f64>> = (0..3).map(|i| corr.call(row.clone(), i)).collect();
    let avg = delayed(mean).call(&parts);
    assert_eq!(avg.name(), "mean");
    assert_eq!(avg.compute().unwrap(), 4.0);
    let collected: Delayed<Vec<f64>> = parts.iter().collect();
    assert_eq!(collected.name(), "list");
    assert_eq!(collected.compute().unwrap(), vec![2.0, 4.0, 6.0]);
    let total: Delayed<f64> = parts.iter().sum();
    assert_eq!(total.compute().unwrap(), 12.0);
    let empty: Delayed<i32> = Vec::<Delayed<i32>>::new().into_iter().sum();
    assert_eq!(empty.compute().unwrap(), 0);
}

#[test]
fn operators_work_between_delayed_values_and_with_plain_numbers() {
    let x = Delayed::value(7i64);
    let y = Delayed::value(2i64);
    assert_eq!((&x - &y).compute().unwrap(), 5);
    assert_eq!((&x * &y).compute().unwrap(), 14);
    assert_eq!((&x / &y).compute().unwrap(), 3);
    assert_eq!((&x % &y).compute().unwrap(), 1);
    assert_eq!((-&x).compute().unwrap(), -7);
    assert_eq!((&x + 1).compute().unwrap(), 8);
    assert_eq!((10 - &x).compute().unwrap(), 3);
    assert_eq!((2.0 * Delayed::value(1.5f64)).compute().unwrap(), 3.0);
    assert_eq!((Delayed::value(1.0f64) / 4.0).name(), "truediv");
    let s = Delayed::value("a".to_string()) + Delayed::value("b");
    assert_eq!(s.compute().unwrap(), "ab", "any T: Add<U> works");
}

#[test]
fn map_zip_and_value() {
    let x = Delayed::value(3i32);
    assert_eq!(x.name(), "i32");
    let doubled = x.map(|v: i32| v * 2);
    assert_eq!(doubled.name(), "lambda");
    assert_eq!(doubled.zip(&x).compute().unwrap(), (6, 3));
    assert_eq!(x.zip(5u8).name(), "tuple");
    let parsed = Delayed::value("12".to_string()).try_map(|s: String| s.parse::<i32>());
    assert_eq!(parsed.compute().unwrap(), 12);
}

#[test]
fn compute_takes_tuples_vectors_and_nesting() {
    let a = delayed(square).call(3);
    let bs: Vec<Delayed<i64>> = (0..4).map(|i| delayed(square).call(i)).collect();
    let (x, ys, (z,)) = compute((&a, &bs, (a.clone() + 1,))).unwrap();
    assert_eq!((x, ys, z), (9, vec![0, 1, 4, 9], 10));
    assert_eq!(compute_all(bs.clone()).unwrap(), vec![0, 1, 4, 9]);
    assert_eq!(compute(bs.as_slice()).unwrap(), vec![0, 1, 4, 9]);
    assert_eq!(compute((&a, &a)).unwrap(), (9, 9), "a value asked twice");
    assert_eq!(
        compute(Vec::<Delayed<i64>>::new()).unwrap(),
        Vec::<i64>::new()
    );
}

#[test]
fn shared_tasks_run_once_per_computation() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = {
        let runs = Arc::clone(&runs);
        delayed(move |x: i64| {
            runs.fetch_add(1, SeqCst);
            x
        })
    };
    let x = counted.call(5);
    let a = &x + &x;
    let b = &x * 3;
    let (a, b) = pool(4).compute((&a, &b)).unwrap();
    assert_eq!((a, b), (10, 15));
    assert_eq!(runs.load(SeqCst), 1);
}

#[test]
fn a_failing_task_is_an_error_naming_it() {
    let parse = delayed(|s: String| s.parse::<i64>()).named("parse");
    let bad = parse.try_call("x".to_string());
    let total = delayed(square).call(&bad) + 1;
    let err = total.compute_with(&pool(2)).unwrap_err();
    assert_eq!(err.key(), Some(bad.key().as_str()));
    assert!(err.to_string().starts_with("task parse-"), "{err}");
    let Error::Task { source, .. } = err else {
        panic!("not a task error: {err:?}")
    };
    assert!(source.downcast_ref::<ParseIntError>().is_some());
}

#[test]
fn a_panicking_task_is_an_error_and_the_pool_stays_usable() {
    fn explode(x: i64) -> i64 {
        if x == 3 {
            panic!("cannot square {x}");
        }
        x * x
    }
    let parts: Vec<_> = (0..8).map(|i| delayed(explode).call(i)).collect();
    let total: Delayed<i64> = parts.iter().sum();
    for options in [pool(3), Options::inline()] {
        let err = total.compute_with(&options).unwrap_err();
        assert!(matches!(err, Error::Panic { .. }), "{err:?}");
        assert_eq!(err.key(), Some(parts[3].key().as_str()));
        assert!(err.to_string().contains("cannot square 3"), "{err}");
    }
    let fine: Delayed<i64> = parts[..3].iter().sum();
    assert_eq!(fine.compute_with(&pool(3)).unwrap(), 5);
    let zero = Delayed::value(1i64) / 0;
    assert!(matches!(zero.compute().unwrap_err(), Error::Panic { .. }));
}

#[test]
fn a_timeout_cancels_instead_of_hanging() {
    // The task is held until the test lets it go: the timeout must come back while it still runs.
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let ended = Arc::new(AtomicUsize::new(0));
    let held = {
        let (gate, ended) = (Arc::clone(&gate), Arc::clone(&ended));
        delayed(move |_: ()| {
            let (open, opened) = &*gate;
            let open = open.lock().unwrap();
            drop(opened.wait_timeout_while(open, Duration::from_secs(30), |open| !*open));
            ended.fetch_add(1, SeqCst);
        })
        .call(())
    };
    let err = held
        .compute_with(&Options::threads(2).timeout(Duration::from_millis(50)))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    assert_eq!(
        ended.load(SeqCst),
        0,
        "the timeout waited for the task to end"
    );
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
}

/// Its one thread stays stuck in the timed-out task, so a next computation of that size must get
/// a new pool rather than queue behind it (here it would time out).
#[test]
fn a_shared_pool_whose_computation_timed_out_is_let_go_of() {
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let held = Arc::clone(&gate);
    let stuck = delayed(move |x: i64| {
        let (open, opened) = &*held;
        let closed = opened
            .wait_timeout_while(open.lock().unwrap(), TIMEOUT, |open| !*open)
            .unwrap();
        assert!(*closed.0, "the test opens the gate");
        x
    })
    .call(1);
    let err = stuck
        .compute_with(&Options::threads(1).timeout(Duration::from_millis(50)))
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    let next = Delayed::value(20i64) + 1;
    assert_eq!(next.compute_with(&pool(1)).unwrap(), 21);
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
}

#[test]
fn independent_tasks_run_in_parallel() {
    // Each task waits until all eight have started: run fewer than eight at a time, and they give up
    // after 30 s and say so, instead of the test reading a clock.
    let meeting = Arc::new((Mutex::new(0usize), Condvar::new()));
    let meet = delayed(move |_: usize| {
        let (count, arrived) = &*meeting;
        let mut count = count.lock().unwrap();
        *count += 1;
        arrived.notify_all();
        let (count, _) = arrived
            .wait_timeout_while(count, Duration::from_secs(30), |count| *count < 8)
            .unwrap();
        *count == 8
    });
    let parts: Vec<_> = (0..8).map(|i| meet.call(i)).collect();
    assert_eq!(pool(8).compute(&parts).unwrap(), vec![true; 8]);
}

#[test]
fn inline_runs_on_the_calling_thread() {
    let here = std::thread::current().id();
    let seen = delayed(|_: ()| std::thread::current().id()).call(());
    assert_eq!(Options::inline().compute(&seen).unwrap(), here);
    let on_pool = pool(2).compute(&seen).unwrap();
    assert_ne!(on_pool, here);
}

#[test]
fn a_task_may_compute_a_graph_itself_without_deadlock() {
    let inner = Arc::new(delayed(square).call(6));
    let outer = delayed(move |x: i64| x + inner.compute_with(&pool(1)).unwrap()).call(1);
    assert_eq!(outer.compute_with(&pool(1)).unwrap(), 37);
}

#[test]
fn default_options_use_the_global_pool() {
    assert_eq!(Options::new().compute(Delayed::value(1)).unwrap(), 1);
    let options = Options::new().scheduler(Scheduler::Global).timeout(TIMEOUT);
    assert_eq!(options.compute(Delayed::value(2) * 2).unwrap(), 4);
}

#[test]
fn long_chains_build_compute_and_drop() {
    let mut x = Delayed::value(0u64);
    for _ in 0..200_000 {
        x = x + 1;
    }
    assert_eq!(x.compute_with(&pool(2)).unwrap(), 200_000);
    assert_eq!(x.compute_with(&Options::inline()).unwrap(), 200_000);
}

#[test]
fn keys_are_unique() {
    let keys: std::collections::HashSet<String> =
        (0..1000).map(|i| delayed(square).call(i).key()).collect();
    assert_eq!(keys.len(), 1000);
}

#[cfg(feature = "render")]
#[test]
fn visualize_writes_svg_png_and_dot() {
    let parts: Vec<_> = (1..=10)
        .map(|i| delayed(square).call(i) + Delayed::value(1))
        .collect();
    let res: Delayed<i64> = parts.iter().sum();
    let dot = res.to_dot().unwrap();
    assert!(dot.contains("square") && dot.contains("sum"), "{dot}");
    let graph = res.task_graph();
    assert_eq!(graph.tasks.len(), 31);
    assert_eq!(graph.edges.len(), 30);
    assert!(res.to_svg().unwrap().starts_with("<svg"));

    let dir = std::env::temp_dir().join(format!("belated-visualize-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for extension in ["svg", "png", "dot"] {
        let path = dir.join(format!("graph.{extension}"));
        res.visualize(&path).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() > 100);
    }
    let png = std::fs::read(dir.join("graph.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    belated::visualize((&parts[0], &parts[1]), dir.join("two.dot")).unwrap();
    let err = res.visualize(dir.join("graph.gif")).unwrap_err();
    assert!(err.to_string().contains("gif"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn handles_and_errors_cross_threads() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Delayed<std::cell::Cell<i32>>>();
    assert_send_sync::<Error>();
    assert_send_sync::<belated::DelayedFn<fn(i64) -> i64, (i64,), i64>>();
    let x = delayed(square).call(5);
    let handle = std::thread::spawn(move || x.compute());
    assert_eq!(handle.join().unwrap().unwrap(), 25);
}

#[test]
fn an_inline_timeout_stops_between_tasks() {
    let ran = Arc::new(AtomicUsize::new(0));
    let sleep = {
        let ran = Arc::clone(&ran);
        delayed(move |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ran.fetch_add(1, SeqCst);
        })
    };
    let parts: Vec<_> = (0..50).map(|_| sleep.call(20)).collect();
    let err = Options::inline()
        .timeout(Duration::from_millis(50))
        .compute(&parts)
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err:?}");
    // 50 tasks of at least 20 ms each cannot all fit in 50 ms, however slow the machine.
    assert!(
        ran.load(SeqCst) < 50,
        "every task ran: the timeout was not checked between tasks"
    );
}

/// Key, worker, and whether it succeeded (`None` for a start).
type Event = (String, Option<usize>, Option<bool>);

#[derive(Default)]
struct Recorded(std::sync::Mutex<Vec<Event>>);

impl belated::Events for Recorded {
    fn task_started(&self, key: &str, worker: Option<usize>) {
        self.0.lock().unwrap().push((key.to_string(), worker, None));
    }

    fn task_finished(&self, key: &str, worker: Option<usize>, succeeded: bool) {
        self.0
            .lock()
            .unwrap()
            .push((key.to_string(), worker, Some(succeeded)));
    }
}

#[test]
fn events_report_every_task_by_key_and_worker() {
    let recorded = std::sync::Arc::new(Recorded::default());
    let double = belated::delayed(|x: i64| x * 2);
    let leaves: Vec<_> = (0..6).map(|i| double.call(i)).collect();
    let total: belated::Delayed<i64> = leaves.iter().sum();
    let options = belated::Options::threads(2).events(recorded.clone());
    assert_eq!(options.compute(&total).unwrap(), 30);
    let events = recorded.0.lock().unwrap().clone();
    let keys: std::collections::BTreeSet<&str> =
        events.iter().map(|(k, _, _)| k.as_str()).collect();
    assert!(leaves.iter().all(|leaf| keys.contains(leaf.key().as_str())));
    assert!(keys.contains(total.key().as_str()));
    assert_eq!(
        events.iter().filter(|e| e.2 == Some(true)).count(),
        keys.len()
    );
    // A pool worker, or the calling thread, which takes part in its computation.
    assert!(events
        .iter()
        .all(|(_, worker, _)| worker.is_none_or(|w| w < 2)));

    let failing = belated::delayed(|x: i64| -> i64 { panic!("no {x}") }).call(1);
    let recorded = std::sync::Arc::new(Recorded::default());
    assert!(belated::Options::inline()
        .events(recorded.clone())
        .compute(&failing)
        .is_err());
    let events = recorded.0.lock().unwrap().clone();
    assert_eq!(events.last().unwrap(), &(failing.key(), None, Some(false)));
}

/// Pending once, waking itself from another thread: a future that really waits.
struct WokenFromElsewhere(bool);

impl std::future::Future for WokenFromElsewhere {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        let waker = cx.waker().clone();
        std::thread::spawn(move || waker.wake());
        std::task::Poll::Pending
    }
}

/// A runtime that counts the futures it ran.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl belated::BlockOn for Counting {
    fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
        self.0.fetch_add(1, SeqCst);
        belated::ParkThread.block_on(future)
    }
}

#[test]
fn async_functions_are_awaited_on_the_runtime_given() {
    async fn fetch(id: u64, scale: u64) -> u64 {
        WokenFromElsewhere(false).await;
        id * scale
    }
    let runtime = Counting::default();
    let fetch = belated::delayed_async(runtime.clone(), fetch);
    assert_eq!(fetch.name(), "fetch");
    let pages: Vec<Delayed<u64>> = (0..4).map(|id| fetch.call(id, 10)).collect();
    let total: Delayed<u64> = pages.iter().sum();
    assert_eq!(total.compute_with(&pool(2)).unwrap(), 60);
    assert_eq!(total.compute_with(&Options::inline()).unwrap(), 60);
    assert_eq!(runtime.0.load(SeqCst), 8);
    let none = belated::delayed_async(belated::ParkThread, || async { 5 }).call();
    assert_eq!(none.compute().unwrap(), 5);
}
