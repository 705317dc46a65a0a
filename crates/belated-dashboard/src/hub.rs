//! What the dashboard shows, fed by the engine while it computes.
//!
//! [`Hub::begin`] returns a [`Live`] computation, which the engine's worker threads tell of every task
//! that starts and finishes. A task costs two clock reads and a few atomic additions, and when it
//! finishes one short lock and an append to the task stream: the engine runs a million trivial tasks
//! in about half a second, so anything more per task would show. The server reads the computation
//! shown through the hub, which keeps the latest [`Live`]; events told to one that a newer computation
//! has replaced are not shown. Every page connection reads the logs from its own cursor ([`Cursor`]),
//! so any number of pages can follow one computation and each receives only what changed since its
//! last update.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::resources::{ProcessReading, Reading};

/// Graphs with more tasks than this are shown per function name only: at that size a drawing of every
/// task is unreadable, and the per-task status updates would dominate the page's traffic.
pub const GRAPH_TASK_LIMIT: usize = 1000;
/// Task-stream bars sent to a page per update at most; a page that falls behind skips ahead. Only
/// these latest bars are kept, so a computation of millions of tasks costs no memory per task here.
const BARS_PER_UPDATE: usize = 4000;
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
    /// What every time shown is measured from; fixed, so that worker threads read it without a lock.
    epoch: Instant,
    state: Mutex<State>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            epoch: Instant::now(),
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
    epoch: Instant,
    spec: ComputeSpec,
    totals: Vec<u32>,
    /// Tasks started, per group; running is this less those finished, read under the log's lock, so
    /// that a page never sees a task both running and finished.
    started: Vec<AtomicU32>,
    /// When each task started, in nanoseconds from the epoch: its bar's left end.
    started_ns: Vec<AtomicU64>,
    begun_ms: f64,
    log: Mutex<Log>,
}

#[derive(Debug)]
struct Log {
    /// Tasks finished, per group: `[done, failed]`.
    finished: Vec<[u32; 2]>,
    /// Every status change, in order; kept only for graphs drawn task by task.
    statuses: Vec<(u32, Status)>,
    /// The latest [`BARS_PER_UPDATE`] bars, of `bars_total` made so far.
    bars: VecDeque<Bar>,
    bars_total: usize,
    ended: Option<(f64, bool)>,
}

#[derive(Debug, Clone, Copy)]
struct Bar {
    group: u32,
    worker: i64,
    start_ms: f64,
    end_ms: f64,
    ok: bool,
}

/// Where one page is in the logs of the computation it follows.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cursor {
    compute: Option<u64>,
    statuses: usize,
    bars: usize,
    samples_at_ms: f64,
}

fn ms_since(epoch: Instant) -> f64 {
    epoch.elapsed().as_secs_f64() * 1e3
}

impl Live {
    fn per_task(&self) -> bool {
        self.spec.group_of.len() <= GRAPH_TASK_LIMIT
    }

    pub fn task_started(&self, task: u32, _worker: Option<usize>) {
        let t = task as usize;
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.started_ns[t].store(nanos, Ordering::Relaxed);
        self.started[self.spec.group_of[t] as usize].fetch_add(1, Ordering::Relaxed);
        if self.per_task() {
            self.log.lock().statuses.push((task, Status::Running));
        }
    }

    pub fn task_finished(&self, task: u32, worker: Option<usize>, ok: bool) {
        let t = task as usize;
        let end_ms = ms_since(self.epoch);
        let start_ms = self.started_ns[t].load(Ordering::Relaxed) as f64 / 1e6;
        let group = self.spec.group_of[t];
        let per_task = self.per_task();
        let mut log = self.log.lock();
        log.finished[group as usize][usize::from(!ok)] += 1;
        if per_task {
            let status = if ok { Status::Done } else { Status::Failed };
            log.statuses.push((task, status));
        }
        if log.bars.len() == BARS_PER_UPDATE {
            log.bars.pop_front();
        }
        log.bars.push_back(Bar {
            group,
            worker: worker.map_or(-1, |w| w as i64),
            start_ms,
            end_ms,
            ok,
        });
        log.bars_total += 1;
    }

    pub fn end(&self, ok: bool) {
        let at = ms_since(self.epoch);
        self.log.lock().ended = Some((at, ok));
    }

    /// This computation's part of an update, and the cursor after it.
    fn update(&self, fresh: bool, mut cursor: Cursor) -> (Value, Cursor) {
        let log = self.log.lock();
        let per_task = self.per_task();
        let statuses: Vec<Value> = log.statuses[cursor.statuses..]
            .iter()
            .map(|(task, status)| json!([task, *status as u8]))
            .collect();
        cursor.statuses = log.statuses.len();
        let unsent = log
            .bars_total
            .saturating_sub(cursor.bars)
            .min(log.bars.len());
        let bars: Vec<Value> = log
            .bars
            .range(log.bars.len() - unsent..)
            .map(|b| json!([b.group, b.worker, round(b.start_ms), round(b.end_ms), b.ok]))
            .collect();
        cursor.bars = log.bars_total;
        let groups: Vec<Value> = self
            .spec
            .groups
            .iter()
            .enumerate()
            .map(|(g, name)| {
                let [done, failed] = log.finished[g];
                // Read under the lock, after the finished counts: every task counted finished has been
                // counted started, so this never goes below zero.
                let running = self.started[g]
                    .load(Ordering::Relaxed)
                    .saturating_sub(done + failed);
                json!({ "name": &**name, "total": self.totals[g], "running": running, "done": done, "failed": failed })
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
            "per_task_graph": per_task,
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
        let log = Log {
            finished: vec![[0, 0]; spec.groups.len()],
            statuses: Vec::new(),
            bars: VecDeque::with_capacity(BARS_PER_UPDATE.min(n)),
            bars_total: 0,
            ended: None,
        };
        let mut state = self.state.lock();
        state.next_id += 1;
        let live = Arc::new(Live {
            id: state.next_id,
            epoch: self.epoch,
            started: spec.groups.iter().map(|_| AtomicU32::new(0)).collect(),
            started_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
            totals,
            spec,
            begun_ms: ms_since(self.epoch),
            log: Mutex::new(log),
        });
        // The computation replaced is dropped here, outside the lock: a million tasks take a while.
        let replaced = state.compute.replace(Arc::clone(&live));
        drop(state);
        drop(replaced);
        live
    }

    pub(crate) fn record_sample(&self, reading: Reading) {
        let at_ms = ms_since(self.epoch);
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
        live.per_task().then(|| Drawable {
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
        let now = round(ms_since(self.epoch));
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
                bars: 0,
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
        {
            let log = live.log.lock();
            assert!(log.statuses.is_empty());
            assert_eq!(log.bars.len(), BARS_PER_UPDATE);
        }
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
