//! A pool of placement groups grown and shrunk while jobs run: by events (tasks that wait for a gate,
//! meetings that need several threads at once), never by how long anything takes.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use belated_core::{current_worker, Graph, PlainHost, Runner, TaskId, ThreadPool};
use parking_lot::{Condvar, Mutex};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Returns from [`Meeting::attend`] only once `parties` threads are in it at the same time.
struct Meeting {
    arrived: Mutex<usize>,
    all_here: Condvar,
    parties: usize,
}

impl Meeting {
    fn new(parties: usize) -> Arc<Self> {
        Arc::new(Meeting {
            arrived: Mutex::new(0),
            all_here: Condvar::new(),
            parties,
        })
    }

    fn attend(&self) {
        let mut arrived = self.arrived.lock();
        *arrived += 1;
        self.all_here.notify_all();
        while *arrived < self.parties {
            assert!(
                !self.all_here.wait_for(&mut arrived, TIMEOUT).timed_out(),
                "only {} of {} threads ever met",
                *arrived,
                self.parties
            );
        }
    }
}

/// A gate tasks wait at until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn wait(&self) {
        let mut open = self.open.lock();
        while !*open {
            assert!(
                !self.opened.wait_for(&mut open, TIMEOUT).timed_out(),
                "the test never opened the gate"
            );
        }
    }

    fn open(&self) {
        *self.open.lock() = true;
        self.opened.notify_all();
    }
}

/// Each task runs its step and returns the worker index it ran on; each start is reported.
struct Steps {
    step: Box<dyn Fn() + Send + Sync>,
    started: Mutex<mpsc::Sender<usize>>,
}

impl Runner for Steps {
    type Value = usize;
    type Error = String;

    fn run(&self, _task: TaskId, _inputs: &[usize]) -> Result<usize, String> {
        let worker = current_worker().expect("on a pool thread");
        let _ = self.started.lock().send(worker);
        (self.step)();
        Ok(worker)
    }
}

/// `tasks` independent tasks, all outputs.
fn independent(tasks: usize) -> (Graph, Vec<TaskId>) {
    let graph = Graph::from_deps::<(), _, _>((0..tasks).map(|_| vec![])).unwrap();
    (graph, (0..tasks as u32).map(TaskId).collect())
}

fn steps(step: impl Fn() + Send + Sync + 'static) -> (Steps, mpsc::Receiver<usize>) {
    let (started, starts) = mpsc::channel();
    let steps = Steps {
        step: Box::new(step),
        started: Mutex::new(started),
    };
    (steps, starts)
}

#[test]
fn a_grown_pool_runs_new_jobs_on_the_new_threads_while_a_task_runs_on_the_old_one() {
    let pool = ThreadPool::with_groups(1, 1, Arc::new(PlainHost)).unwrap();
    let gate = Arc::new(Gate::default());
    let (gated, starts) = steps({
        let gate = Arc::clone(&gate);
        move || gate.wait()
    });
    let (graph, outputs) = independent(1);
    let running = pool.submit(graph, outputs, gated);
    assert_eq!(starts.recv_timeout(TIMEOUT), Ok(0));
    pool.grow(4).unwrap();
    assert_eq!((pool.groups(), pool.threads()), (4, 4));
    // Three tasks that return only once they run at the same time: on the three new threads.
    let meeting = Meeting::new(3);
    let (met, _) = steps(move || meeting.attend());
    let (graph, outputs) = independent(3);
    let new = pool.submit(graph, outputs, met);
    assert!(new.wait_timeout(TIMEOUT));
    let mut workers = new.result().unwrap();
    workers.sort_unstable();
    assert_eq!(workers, [1, 2, 3]);
    gate.open();
    assert!(running.wait_timeout(TIMEOUT));
    assert_eq!(running.result().unwrap(), [0]);
    assert!(starts.try_recv().is_err(), "the running task started once");
}

#[test]
fn a_shrunk_group_finishes_its_task_takes_no_other_and_is_waited_for() {
    let pool = Arc::new(ThreadPool::with_groups(2, 1, Arc::new(PlainHost)).unwrap());
    let gate = Arc::new(Gate::default());
    let (gated, starts) = steps({
        let gate = Arc::clone(&gate);
        move || gate.wait()
    });
    // Four tasks, two running (one per thread) and two waiting for a thread.
    let (graph, outputs) = independent(4);
    let running = pool.submit(graph, outputs, gated);
    let mut first = [0, 1].map(|_| starts.recv_timeout(TIMEOUT).expect("started"));
    first.sort_unstable();
    assert_eq!(first, [0, 1]);
    pool.shrink(1);
    assert_eq!(pool.threads(), 1);
    let (shrunk, waited) = mpsc::channel();
    let waiter = {
        let pool = Arc::clone(&pool);
        std::thread::spawn(move || {
            pool.wait_shrunk();
            shrunk.send(()).unwrap();
        })
    };
    gate.open();
    assert!(running.wait_timeout(TIMEOUT));
    assert!(
        waited.try_recv().is_err(),
        "the job running at the shrink has not left yet"
    );
    let ran_on = running.result().unwrap();
    assert_eq!(
        ran_on.iter().filter(|&&worker| worker == 1).count(),
        1,
        "the shrunk thread ran only the task it had: {ran_on:?}"
    );
    waited.recv_timeout(TIMEOUT).expect("waited for");
    waiter.join().unwrap();
    let (quick, _) = steps(|| {});
    let (graph, outputs) = independent(8);
    let after = pool.submit(graph, outputs, quick);
    assert!(after.wait_timeout(TIMEOUT));
    assert_eq!(
        after.result().unwrap(),
        [0; 8],
        "new jobs run on the group left"
    );
}

#[test]
fn a_group_grown_back_before_its_thread_ended_keeps_that_thread() {
    let pool = ThreadPool::with_groups(2, 1, Arc::new(PlainHost)).unwrap();
    let gate = Arc::new(Gate::default());
    let (gated, starts) = steps({
        let gate = Arc::clone(&gate);
        move || gate.wait()
    });
    let (graph, outputs) = independent(2);
    let running = pool.submit(graph, outputs, gated);
    starts.recv_timeout(TIMEOUT).unwrap();
    starts.recv_timeout(TIMEOUT).unwrap();
    pool.shrink(1);
    pool.grow(2).unwrap();
    gate.open();
    assert!(running.wait_timeout(TIMEOUT));
    drop(running);
    pool.wait_shrunk();
    // Both groups still serve: two tasks meet, one on each thread.
    let meeting = Meeting::new(2);
    let (met, _) = steps(move || meeting.attend());
    let (graph, outputs) = independent(2);
    let both = pool.submit(graph, outputs, met);
    assert!(both.wait_timeout(TIMEOUT));
    let mut workers = both.result().unwrap();
    workers.sort_unstable();
    assert_eq!(workers, [0, 1]);
}

#[test]
fn a_running_job_takes_its_waiting_tasks_to_the_threads_a_grow_adds() {
    let pool = ThreadPool::with_groups(1, 1, Arc::new(PlainHost)).unwrap();
    // Three tasks that return only once they run at the same time: one thread cannot.
    let meeting = Meeting::new(3);
    let (met, starts) = steps(move || meeting.attend());
    let (graph, outputs) = independent(3);
    let running = pool.submit(graph, outputs, met);
    assert_eq!(starts.recv_timeout(TIMEOUT), Ok(0));
    pool.grow(3).unwrap();
    assert!(running.wait_timeout(TIMEOUT));
    let mut workers = running.result().unwrap();
    workers.sort_unstable();
    assert_eq!(workers, [0, 1, 2]);
}
