//! How many OS threads pools leave behind. One test in its own binary: counting a process's threads
//! means nothing while other tests start and stop theirs.

use std::time::Duration;

use belated::{Delayed, Options, ThreadPool};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The names of this process's OS threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .collect()
}

fn count(prefix: &str) -> usize {
    thread_names()
        .iter()
        .filter(|name| name.starts_with(prefix))
        .count()
}

/// How many threads are named `prefix…` once `settled` holds of that count, or the timeout passes. A
/// new thread names itself when it first runs, so a thread just spawned can still carry its parent's
/// name, and one let go of can still be ending.
fn count_once(prefix: &str, settled: impl Fn(usize) -> bool) -> usize {
    let give_up = std::time::Instant::now() + TIMEOUT;
    let mut seen = count(prefix);
    while !settled(seen) && std::time::Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(10));
        seen = count(prefix);
    }
    seen
}

#[test]
#[cfg(target_os = "linux")]
fn shared_pools_are_bounded_and_owned_pools_end_when_dropped() {
    let x = Delayed::value(1i64) + 1;
    for threads in 1..=40 {
        let options = Options::threads(threads).timeout(TIMEOUT);
        assert_eq!(x.compute_with(&options).unwrap(), 2);
    }
    // 820 threads if every size were kept. Pools let go of are not waited for: their idle threads end
    // on their own, soon.
    let kept = count_once("belated-worker", |kept| {
        kept <= belated_core::kept_threads()
    });
    assert!(
        kept <= belated_core::kept_threads(),
        "{kept} threads kept after computing on pools of 1..=40 threads"
    );

    let pool = ThreadPool::builder()
        .num_threads(7)
        .thread_name("belated-own")
        .build()
        .unwrap();
    assert_eq!(pool.threads(), 7);
    let options = Options::new().pool(&pool).timeout(TIMEOUT);
    assert_eq!(x.compute_with(&options).unwrap(), 2);
    assert_eq!(count_once("belated-own", |named| named == 7), 7);
    drop(options);
    assert_eq!(
        count("belated-own"),
        7,
        "the pool lives while a handle does"
    );
    drop(pool);
    assert_eq!(
        count("belated-own"),
        0,
        "dropping the last handle joins its threads"
    );
}
