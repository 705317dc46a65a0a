//! What the dashboard shows, fed by the engine while it computes.
//!
//! [`Hub::begin`] returns a [`Live`] computation, which the engine's worker threads tell of every task
//! that starts and finishes. A task costs two time reads ([`Ticks`]) and two writes to its worker's
//! own stream (its counts, its open tasks and its task-stream bars), under a lock only that worker and
//! a reading page take: the engine runs a million trivial tasks in about half a second, so anything
//! more per task would show. Nothing a task writes is shared with another worker: counts or start
//! times kept for all workers together would move their cache lines from core to core at every task.
//! The server reads the computation shown through the hub, which keeps the latest [`Live`]; events
//! told to one that a newer computation has replaced are not shown. Every page connection reads the
//! logs from its own cursor ([`Cursor`]), so any number of pages can follow one computation and each
//! receives only what changed since its last update.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::resources::{ProcessReading, Reading};

/// Graphs with more tasks than this are shown per function name only: at that size a drawing of every
/// task is unreadable, and the per-task status updates would dominate the page's traffic.
pub const GRAPH_TASK_LIMIT: usize = 1000;
/// Task-stream bars sent to a page per update at most; a page that falls behind skips ahead. Each
/// worker keeps only its latest this many bars, so a computation of millions of tasks costs no memory
/// per task here. A power of two, so that a bar's place in its ring is a mask of its number.
const BARS_PER_UPDATE: usize = 4096;
/// Resource samples kept (at [`SAMPLE_EVERY`], ten minutes).
const SAMPLES_KEPT: usize = 1200;
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Waiting = 0,
    Running = 1,
    Done = 2,
    Failed = 3,
}

/// One computation, as the dashboard knows it.
#[derive(Debug)]
pub struct ComputeSpec {
    /// The names tasks are grouped by (a function's name, or a key given without its token), each once.
    pub groups: Vec<Arc<str>>,
    /// Each task's group: an index into `groups`.
    pub group_of: Vec<u32>,
    /// `(dependency, dependent)` pairs. Only graphs of at most [`GRAPH_TASK_LIMIT`] tasks are drawn, so
    /// larger ones need not pass any.
    pub edges: Vec<(u32, u32)>,
    pub workers: usize,
}

/// A graph to draw: each task's label and the `(dependency, dependent)` edges.
#[derive(Debug)]
pub struct Drawable {
    pub labels: Vec<Arc<str>>,
    pub edges: Vec<(u32, u32)>,
}

#[derive(Debug)]
pub struct Hub {
    /// What every time shown is measured from ([`clock_ns`]); fixed, so that worker threads read it
    /// without a lock.
    epoch_ns: u64,
    ticks: Ticks,
    state: Mutex<State>,
}

impl Default for Hub {
    fn default() -> Self {
        let epoch_ns = clock_ns();
        Hub {
            epoch_ns,
            ticks: Ticks::new(),
            state: Mutex::default(),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    compute: Option<Arc<Live>>,
    samples: VecDeque<Sample>,
    /// Each process's share of the latest sample: this process's, then each worker process's.
    processes: Vec<ProcessReading>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: f64,
    cpu_percent: f64,
    memory_mb: f64,
}

/// A computation being shown, told of its tasks by the engine's worker threads.
#[derive(Debug)]
pub struct Live {
    id: u64,
    epoch_ns: u64,
    ticks: Ticks,
    spec: ComputeSpec,
    /// Whether every status change is kept, for a graph drawn task by task.
    per_task: bool,
    totals: Vec<u32>,
    /// Each worker's counts, open tasks and task stream; the first is for threads outside the pool.
    streams: Box<[Stream]>,
    begun_ms: f64,
    log: Mutex<Log>,
}

/// One group's tasks by state, on one stream. A task starts and finishes on one stream, and a page reads
/// a stream's counts under its lock, so running (started less finished) counts each task once. (A task
/// whose start an earlier observer's panic kept from this one still finishes: running is floored at
/// zero.)
#[derive(Debug, Default, Clone, Copy)]
struct GroupCounts {
    started: u32,
    done: u32,
    failed: u32,
}

#[derive(Debug, Default)]
struct Log {
    /// Every status change, in order; kept only for graphs drawn task by task.
    statuses: Vec<(u32, Status)>,
    ended: Option<(f64, bool)>,
}

/// One worker's part of a computation. Aligned to its own cache lines, so that one worker's writes
/// don't evict another's.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stream(Mutex<Tasks>);

#[derive(Debug, Default)]
struct Tasks {
    /// Per group.
    counts: Vec<GroupCounts>,
    /// The tasks started and not finished, with when they started ([`Ticks`]): one, or a batch.
    open: Vec<(u32, u64)>,
    ring: Ring,
}

/// The latest [`BARS_PER_UPDATE`] bars, of `total` made so far.
#[derive(Debug, Default)]
struct Ring {
    bars: Vec<Bar>,
    total: usize,
}

impl Ring {
    fn push(&mut self, bar: Bar) {
        if self.bars.len() < BARS_PER_UPDATE {
            self.bars.push(bar);
        } else {
            self.bars[self.total % BARS_PER_UPDATE] = bar;
        }
        self.total += 1;
    }

    /// The bars made since the `sent`th, as many as are kept.
    fn since(&self, sent: usize) -> impl Iterator<Item = &Bar> {
        let unsent = self.total.saturating_sub(sent).min(self.bars.len());
        (self.total - unsent..self.total).map(|n| &self.bars[n % BARS_PER_UPDATE])
    }
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    group: u32,
    worker: i32,
    ok: bool,
    /// When the task started and ended ([`Ticks`]).
    start: u64,
    end: u64,
}

/// Where one page is in the logs of the computation it follows.
#[derive(Debug, Default, Clone)]
pub struct Cursor {
    compute: Option<u64>,
    statuses: usize,
    /// Bars sent, per worker stream.
    bars: Vec<usize>,
    samples_at_ms: f64,
}

/// Nanoseconds on the monotonic clock (`Instant`'s on Linux), read directly: `Instant::elapsed` and
/// its conversions cost more than the read itself, twice per task.
fn clock_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to; CLOCK_MONOTONIC exists on every supported system.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

/// What a task's start and end are read on, twice per task: the processor's time-stamp counter where
/// the kernel's clock is that counter (so it runs at one rate on every core), else the clock. A clock
/// read costs more than the task itself does here (58 ns against 24 for the counter, a trivial task
/// takes about 300). Counts become milliseconds when a page asks, by the rate the counter ran at
/// since the hub's epoch, measured then: the longer the span, the more exact.
#[derive(Debug, Clone, Copy)]
struct Ticks {
    counter: bool,
    /// The count at the hub's epoch.
    epoch: u64,
}

impl Ticks {
    fn new() -> Self {
        let counter = cfg!(target_arch = "x86_64")
            && std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .is_ok_and(|source| source.trim() == "tsc");
        let mut ticks = Ticks { counter, epoch: 0 };
        ticks.epoch = ticks.now();
        ticks
    }

    fn now(self) -> u64 {
        if self.counter {
            time_stamp_counter()
        } else {
            clock_ns()
        }
    }

    /// Milliseconds from `epoch_ns` to the moment each count given was read.
    fn to_ms(self, epoch_ns: u64) -> impl Fn(u64) -> f64 {
        let ns_per_tick = if self.counter {
            let ticks = self.now().saturating_sub(self.epoch).max(1);
            clock_ns().saturating_sub(epoch_ns) as f64 / ticks as f64
        } else {
            1.0
        };
        move |at| at.saturating_sub(self.epoch) as f64 * ns_per_tick / 1e6
    }
}

#[cfg(target_arch = "x86_64")]
fn time_stamp_counter() -> u64 {
    // SAFETY: every x86-64 processor has the instruction, and it only reads the counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
fn time_stamp_counter() -> u64 {
    clock_ns()
}

fn ms_between(epoch_ns: u64, at_ns: u64) -> f64 {
    at_ns.saturating_sub(epoch_ns) as f64 / 1e6
}

impl Live {
    fn stream(&self, worker: Option<usize>) -> &Stream {
        let pool = self.streams.len() - 1;
        // A division per task shows at a million tasks; only a worker of a larger pool needs one.
        let index = match worker {
            None => 0,
            Some(w) if w < pool => 1 + w,
            Some(w) => 1 + w % pool,
        };
        &self.streams[index]
    }

    pub fn task_started(&self, task: u32, worker: Option<usize>) {
        let start = self.ticks.now();
        let group = self.spec.group_of[task as usize] as usize;
        {
            let mut tasks = self.stream(worker).0.lock();
            tasks.counts[group].started += 1;
            tasks.open.push((task, start));
        }
        if self.per_task {
            self.log.lock().statuses.push((task, Status::Running));
        }
    }

    pub fn task_finished(&self, task: u32, worker: Option<usize>, ok: bool) {
        let end = self.ticks.now();
        let group = self.spec.group_of[task as usize];
        {
            let mut tasks = self.stream(worker).0.lock();
            let counts = &mut tasks.counts[group as usize];
            if ok {
                counts.done += 1;
            } else {
                counts.failed += 1;
            }
            // A batch's tasks start together and finish in order, a single task is the only one open.
            let start = match tasks.open.iter().position(|&(open, _)| open == task) {
                Some(at) => tasks.open.remove(at).1,
                None => end,
            };
            tasks.ring.push(Bar {
                group,
                worker: worker.map_or(-1, |w| i32::try_from(w).unwrap_or(i32::MAX)),
                ok,
                start,
                end,
            });
        }
        if self.per_task {
            let status = if ok { Status::Done } else { Status::Failed };
            self.log.lock().statuses.push((task, status));
        }
    }

    pub fn end(&self, ok: bool) {
        let at = ms_between(self.epoch_ns, clock_ns());
        self.log.lock().ended = Some((at, ok));
    }

    /// This computation's part of an update, and the cursor after it.
    fn update(&self, fresh: bool, mut cursor: Cursor) -> (Value, Cursor) {
        let log = self.log.lock();
        let statuses: Vec<Value> = log.statuses[cursor.statuses..]
            .iter()
            .map(|(task, status)| json!([task, *status as u8]))
            .collect();
        cursor.statuses = log.statuses.len();
        cursor.bars.resize(self.streams.len(), 0);
        let mut unsent: Vec<Bar> = Vec::new();
        let mut counts = vec![GroupCounts::default(); self.spec.groups.len()];
        for (stream, sent) in self.streams.iter().zip(&mut cursor.bars) {
            let tasks = stream.0.lock();
            for (sum, part) in counts.iter_mut().zip(&tasks.counts) {
                sum.started += part.started;
                sum.done += part.done;
                sum.failed += part.failed;
            }
            unsent.extend(tasks.ring.since(*sent));
            *sent = tasks.ring.total;
        }
        // The latest bars of all workers together, as one stream of them would have kept.
        unsent.sort_unstable_by_key(|bar| bar.end);
        let latest = &unsent[unsent.len().saturating_sub(BARS_PER_UPDATE)..];
        let to_ms = self.ticks.to_ms(self.epoch_ns);
        let ms = |at| round(to_ms(at));
        let bars: Vec<Value> = latest
            .iter()
            .map(|b| json!([b.group, b.worker, ms(b.start), ms(b.end), b.ok]))
            .collect();
        let groups: Vec<Value> = self
            .spec
            .groups
            .iter()
            .zip(&counts)
            .zip(&self.totals)
            .map(|((name, counts), total)| {
                let GroupCounts { started, done, failed } = *counts;
                let running = started.saturating_sub(done + failed);
                json!({ "name": &**name, "total": total, "running": running, "done": done, "failed": failed })
            })
            .collect();
        let update = json!({
            "id": self.id,
            "fresh": fresh,
            "tasks": self.spec.group_of.len(),
            "workers": self.spec.workers,
            "begun": round(self.begun_ms),
            "ended": log.ended.map(|(at, _)| round(at)),
            "ok": log.ended.map(|(_, ok)| ok),
            "per_task_graph": self.per_task,
            "groups": groups,
            "statuses": statuses,
            "bars": bars,
        });
        (update, cursor)
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// Starts showing a computation, which replaces the one shown; the engine tells the [`Live`]
    /// returned of its tasks.
    pub fn begin(&self, spec: ComputeSpec) -> Arc<Live> {
        let mut totals = vec![0u32; spec.groups.len()];
        for &group in &spec.group_of {
            totals[group as usize] += 1;
        }
        let n = spec.group_of.len();
        let mut state = self.state.lock();
        state.next_id += 1;
        let live = Arc::new(Live {
            id: state.next_id,
            epoch_ns: self.epoch_ns,
            ticks: self.ticks,
            per_task: n <= GRAPH_TASK_LIMIT,
            streams: (0..=spec.workers.max(1))
                .map(|_| {
                    Stream(Mutex::new(Tasks {
                        counts: vec![GroupCounts::default(); spec.groups.len()],
                        ..Tasks::default()
                    }))
                })
                .collect(),
            totals,
            spec,
            begun_ms: ms_between(self.epoch_ns, clock_ns()),
            log: Mutex::default(),
        });
        // The computation replaced is dropped here, outside the lock: a million tasks take a while.
        let replaced = state.compute.replace(Arc::clone(&live));
        drop(state);
        drop(replaced);
        live
    }

    pub(crate) fn record_sample(&self, reading: Reading) {
        let at_ms = ms_between(self.epoch_ns, clock_ns());
        let mut state = self.state.lock();
        if state.samples.len() == SAMPLES_KEPT {
            state.samples.pop_front();
        }
        state.samples.push_back(Sample {
            at_ms,
            cpu_percent: reading.cpu_percent,
            memory_mb: reading.memory_mb,
        });
        state.processes = reading.processes;
    }

    /// The graph of the computation shown, if it is small enough to draw task by task.
    pub fn graph(&self) -> Option<Drawable> {
        let live = self.state.lock().compute.clone()?;
        live.per_task.then(|| Drawable {
            labels: live
                .spec
                .group_of
                .iter()
                .map(|&g| Arc::clone(&live.spec.groups[g as usize]))
                .collect(),
            edges: live.spec.edges.clone(),
        })
    }

    /// Everything that changed since `cursor`, as one JSON update, and the cursor after it.
    pub fn update(&self, mut cursor: Cursor) -> (Value, Cursor) {
        let (samples, processes, live) = {
            let state = self.state.lock();
            let samples: Vec<Value> = state
                .samples
                .iter()
                .filter(|s| s.at_ms > cursor.samples_at_ms)
                .map(|s| json!([round(s.at_ms), round(s.cpu_percent), round(s.memory_mb)]))
                .collect();
            if let Some(last) = state.samples.back() {
                cursor.samples_at_ms = last.at_ms;
            }
            let processes: Vec<Value> = state
                .processes
                .iter()
                .map(|p| json!([p.pid, round(p.cpu_percent), round(p.memory_mb)]))
                .collect();
            (samples, processes, state.compute.clone())
        };
        let now = round(ms_between(self.epoch_ns, clock_ns()));
        let Some(live) = live else {
            return (
                json!({ "now": now, "compute": null, "samples": samples, "processes": processes }),
                cursor,
            );
        };
        let fresh = cursor.compute != Some(live.id);
        if fresh {
            cursor = Cursor {
                compute: Some(live.id),
                statuses: 0,
                bars: Vec::new(),
                ..cursor
            };
        }
        let (compute, cursor) = live.update(fresh, cursor);
        (
            json!({ "now": now, "compute": compute, "samples": samples, "processes": processes }),
            cursor,
        )
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A computation whose task `i` is labelled `labels[i]`.
    fn spec(labels: &[&str], edges: &[(u32, u32)]) -> ComputeSpec {
        let mut groups: Vec<Arc<str>> = Vec::new();
        let group_of = labels
            .iter()
            .map(|label| {
                let g = groups.iter().position(|name| &**name == *label);
                g.unwrap_or_else(|| {
                    groups.push(Arc::from(*label));
                    groups.len() - 1
                }) as u32
            })
            .collect();
        ComputeSpec {
            groups,
            group_of,
            edges: edges.to_vec(),
            workers: 2,
        }
    }

    #[test]
    fn updates_carry_only_what_changed_since_the_cursor() {
        let hub = Hub::new();
        let live = hub.begin(spec(&["square", "square", "add"], &[(0, 2), (1, 2)]));
        live.task_started(0, Some(0));
        let (first, cursor) = hub.update(Cursor::default());
        assert_eq!(first["compute"]["fresh"], true);
        assert_eq!(first["compute"]["statuses"], json!([[0, 1]]));
        assert_eq!(first["compute"]["groups"][0]["running"], 1);
        assert_eq!(first["compute"]["groups"][0]["total"], 2);
        assert_eq!(first["compute"]["groups"][1]["total"], 1);
        live.task_finished(0, Some(0), true);
        let (second, cursor) = hub.update(cursor);
        assert_eq!(second["compute"]["fresh"], false);
        assert_eq!(second["compute"]["statuses"], json!([[0, 2]]));
        assert_eq!(second["compute"]["bars"].as_array().unwrap().len(), 1);
        assert_eq!(second["compute"]["groups"][0]["done"], 1);
        assert_eq!(second["compute"]["groups"][0]["running"], 0);
        let (third, _) = hub.update(cursor);
        assert!(third["compute"]["statuses"].as_array().unwrap().is_empty());
    }

    #[test]
    fn a_bar_spans_its_task_from_start_to_finish() {
        let hub = Hub::new();
        let live = hub.begin(spec(&["a", "b"], &[]));
        live.task_started(1, Some(1));
        let (before, _) = hub.update(Cursor::default());
        live.task_finished(1, Some(1), true);
        let (after, _) = hub.update(Cursor::default());
        let bar = &after["compute"]["bars"][0];
        assert_eq!(bar[0], 1, "the bar's group");
        assert_eq!(bar[1], 1, "the bar's worker");
        let (start, end) = (bar[2].as_f64().unwrap(), bar[3].as_f64().unwrap());
        let seen_running = before["now"].as_f64().unwrap();
        assert!(
            start <= seen_running && seen_running <= end,
            "{start} ≤ {seen_running} ≤ {end}"
        );
    }

    #[test]
    fn each_task_of_a_batch_gets_a_bar_from_its_own_start() {
        let hub = Hub::new();
        let live = hub.begin(spec(&["a", "b", "c"], &[]));
        live.task_started(0, Some(0));
        live.task_started(1, Some(0));
        let (before, _) = hub.update(Cursor::default());
        assert_eq!(before["compute"]["groups"][0]["running"], 1);
        assert_eq!(before["compute"]["groups"][1]["running"], 1);
        live.task_finished(1, Some(0), true);
        live.task_finished(0, Some(0), false);
        let (after, _) = hub.update(Cursor::default());
        let seen_running = before["now"].as_f64().unwrap();
        let bars = after["compute"]["bars"].as_array().unwrap();
        assert_eq!(bars.len(), 2);
        for bar in bars {
            let (start, end) = (bar[2].as_f64().unwrap(), bar[3].as_f64().unwrap());
            assert!(start <= seen_running && seen_running <= end, "{bar}");
        }
        let groups = &after["compute"]["groups"];
        assert_eq!([&groups[0]["failed"], &groups[1]["done"]], [1, 1]);
        assert_eq!([&groups[0]["running"], &groups[1]["running"]], [0, 0]);
    }

    #[test]
    fn a_newer_computation_replaces_the_shown_one_and_stale_events_are_ignored() {
        let hub = Hub::new();
        let old = hub.begin(spec(&["a"], &[]));
        let (_, cursor) = hub.update(Cursor::default());
        let new = hub.begin(spec(&["b", "b"], &[(0, 1)]));
        old.task_started(0, None);
        new.task_started(0, Some(1));
        new.task_finished(0, Some(1), false);
        new.end(false);
        let (update, _) = hub.update(cursor);
        let compute = &update["compute"];
        assert_eq!(compute["id"], new.id);
        assert_eq!(compute["fresh"], true);
        assert_eq!(compute["groups"][0]["name"], "b");
        assert_eq!(compute["groups"][0]["failed"], 1);
        assert_eq!(compute["groups"][0]["running"], 0);
        assert_eq!(compute["ok"], false);
        assert_eq!(compute["statuses"], json!([[0, 1], [0, 3]]));
    }

    #[test]
    fn small_graphs_are_drawn_with_each_task_labelled_by_its_group() {
        let hub = Hub::new();
        hub.begin(spec(&["inc", "inc", "sum"], &[(0, 2), (1, 2)]));
        let drawable = hub.graph().unwrap();
        let labels: Vec<&str> = drawable.labels.iter().map(|l| &**l).collect();
        assert_eq!(labels, ["inc", "inc", "sum"]);
        assert_eq!(drawable.edges, [(0, 2), (1, 2)]);
    }

    #[test]
    fn large_graphs_are_shown_per_function_only() {
        let hub = Hub::new();
        let labels = vec!["inc"; GRAPH_TASK_LIMIT + 1];
        let live = hub.begin(spec(&labels, &[]));
        live.task_started(5, Some(0));
        let (update, _) = hub.update(Cursor::default());
        assert_eq!(update["compute"]["per_task_graph"], false);
        assert_eq!(update["compute"]["groups"][0]["running"], 1);
        assert!(update["compute"]["statuses"].as_array().unwrap().is_empty());
        assert!(hub.graph().is_none());
    }

    #[test]
    fn a_large_computation_keeps_no_record_per_task_beyond_the_latest_bars() {
        let hub = Hub::new();
        let n = 3 * BARS_PER_UPDATE;
        let live = hub.begin(spec(&vec!["t"; n], &[]));
        for task in 0..n as u32 {
            live.task_started(task, Some(0));
            live.task_finished(task, Some(0), true);
        }
        assert!(live.log.lock().statuses.is_empty());
        let kept: usize = live
            .streams
            .iter()
            .map(|s| s.0.lock().ring.bars.len())
            .sum();
        assert_eq!(kept, BARS_PER_UPDATE);
        let (update, _) = hub.update(Cursor::default());
        assert_eq!(update["compute"]["groups"][0]["done"], n);
        assert_eq!(
            update["compute"]["bars"].as_array().unwrap().len(),
            BARS_PER_UPDATE
        );
    }

    #[test]
    fn a_page_that_falls_behind_skips_to_the_latest_bars() {
        let hub = Hub::new();
        let n = BARS_PER_UPDATE + 10;
        let live = hub.begin(spec(&vec!["t"; n], &[]));
        for task in 0..n as u32 {
            live.task_started(task, Some(0));
            live.task_finished(task, Some(0), true);
        }
        let (update, cursor) = hub.update(Cursor::default());
        assert_eq!(
            update["compute"]["bars"].as_array().unwrap().len(),
            BARS_PER_UPDATE
        );
        let (next, _) = hub.update(cursor);
        assert!(next["compute"]["bars"].as_array().unwrap().is_empty());
    }

    #[test]
    fn counts_from_many_threads_add_up_and_never_show_a_task_twice() {
        let hub = Hub::new();
        let threads = 4;
        let per_thread = 5000;
        let live = hub.begin(spec(&vec!["t"; threads * per_thread], &[]));
        std::thread::scope(|scope| {
            for worker in 0..threads {
                let live = &live;
                scope.spawn(move || {
                    for i in 0..per_thread {
                        let task = (worker * per_thread + i) as u32;
                        live.task_started(task, Some(worker));
                        live.task_finished(task, Some(worker), i % 7 != 0);
                    }
                });
            }
            // A page reading meanwhile sees every task at most once and no more running than workers.
            for _ in 0..50 {
                let (update, _) = hub.update(Cursor::default());
                let group = &update["compute"]["groups"][0];
                let seen = ["running", "done", "failed"].map(|k| group[k].as_u64().unwrap());
                assert!(seen[0] <= threads as u64, "{group}");
                assert!(
                    seen.iter().sum::<u64>() <= (threads * per_thread) as u64,
                    "{group}"
                );
            }
        });
        let (update, _) = hub.update(Cursor::default());
        let group = &update["compute"]["groups"][0];
        let failed = threads * per_thread.div_ceil(7);
        assert_eq!(group["failed"], failed);
        assert_eq!(group["done"], threads * per_thread - failed);
        assert_eq!(group["running"], 0);
        assert_eq!(
            update["compute"]["bars"].as_array().unwrap().len(),
            BARS_PER_UPDATE
        );
    }

    #[test]
    fn each_update_carries_every_processs_share_of_the_latest_sample() {
        let hub = Hub::new();
        let process = |pid, cpu_percent, memory_mb| ProcessReading {
            pid,
            cpu_percent,
            memory_mb,
        };
        let reading = |processes: Vec<ProcessReading>| Reading {
            cpu_percent: processes.iter().map(|p| p.cpu_percent).sum(),
            memory_mb: processes.iter().map(|p| p.memory_mb).sum(),
            processes,
        };
        hub.record_sample(reading(vec![
            process(10, 5.0, 80.0),
            process(11, 99.0, 40.0),
        ]));
        let (idle, cursor) = hub.update(Cursor::default());
        assert_eq!(
            idle["processes"],
            json!([[10, 5.0, 80.0], [11, 99.0, 40.0]])
        );
        assert_eq!(idle["samples"][0][1], 104.0, "the total, for the chart");
        // A worker replaced since: only the processes of the latest sample are shown.
        hub.begin(spec(&["a"], &[]));
        hub.record_sample(reading(vec![
            process(10, 1.0, 81.0),
            process(12, 0.0, 30.0),
        ]));
        let (computing, _) = hub.update(cursor);
        assert_eq!(
            computing["processes"],
            json!([[10, 1.0, 81.0], [12, 0.0, 30.0]])
        );
    }
}
