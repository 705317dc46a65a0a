//! What the dashboard shows, fed by the engine while it computes.
//!
//! The engine calls [`Hub::task_started`] and [`Hub::task_finished`] from its worker threads: each is one
//! short lock and an append, so a dashboard costs little per task. Every page connection reads the
//! logs from its own cursor ([`Cursor`]), so any number of pages can follow one computation and each
//! receives only what changed since its last update.

use std::collections::VecDeque;
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
    /// Each task's function name (its key prefix).
    pub labels: Vec<Arc<str>>,
    /// `(dependency, dependent)` pairs.
    pub edges: Vec<(u32, u32)>,
    pub workers: usize,
}

/// A graph to draw: each task's label and the `(dependency, dependent)` edges.
#[derive(Debug)]
pub struct Drawable {
    pub labels: Vec<Arc<str>>,
    pub edges: Vec<(u32, u32)>,
}

#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    compute: Option<Compute>,
    samples: VecDeque<Sample>,
    /// Each process's share of the latest sample: this process's, then each worker process's.
    processes: Vec<ProcessReading>,
    epoch: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at_ms: f64,
    cpu_percent: f64,
    memory_mb: f64,
}

#[derive(Debug)]
struct Compute {
    id: u64,
    spec: ComputeSpec,
    groups: Vec<Group>,
    group_of: Vec<u32>,
    status: Vec<Status>,
    started_ms: Vec<f64>,
    /// Every status change, in order; kept only for graphs drawn task by task.
    status_log: Vec<(u32, Status)>,
    /// The latest [`BARS_PER_UPDATE`] bars, of `bars_total` made so far.
    bars: VecDeque<Bar>,
    bars_total: usize,
    begun_ms: f64,
    ended: Option<(f64, bool)>,
}

#[derive(Debug)]
struct Group {
    name: Arc<str>,
    total: u32,
    running: u32,
    done: u32,
    failed: u32,
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

impl State {
    fn now_ms(&mut self) -> f64 {
        self.epoch
            .get_or_insert_with(Instant::now)
            .elapsed()
            .as_secs_f64()
            * 1e3
    }

    fn current(&mut self, id: u64) -> Option<&mut Compute> {
        self.compute.as_mut().filter(|c| c.id == id)
    }
}

impl Compute {
    fn log_status(&mut self, task: u32, status: Status) {
        if self.spec.labels.len() <= GRAPH_TASK_LIMIT {
            self.status_log.push((task, status));
        }
    }
}

impl Hub {
    pub fn new() -> Arc<Self> {
        Arc::new(Hub::default())
    }

    /// Starts showing a computation; returns its id for the calls that follow. A newer computation
    /// replaces the one shown.
    pub fn begin(&self, spec: ComputeSpec) -> u64 {
        let mut state = self.state.lock();
        let now = state.now_ms();
        state.next_id += 1;
        let id = state.next_id;
        let mut groups: Vec<Group> = Vec::new();
        let mut group_of = Vec::with_capacity(spec.labels.len());
        let mut by_name = std::collections::HashMap::<Arc<str>, u32>::new();
        for label in &spec.labels {
            let g = *by_name.entry(Arc::clone(label)).or_insert_with(|| {
                groups.push(Group {
                    name: Arc::clone(label),
                    total: 0,
                    running: 0,
                    done: 0,
                    failed: 0,
                });
                (groups.len() - 1) as u32
            });
            groups[g as usize].total += 1;
            group_of.push(g);
        }
        let n = spec.labels.len();
        state.compute = Some(Compute {
            id,
            spec,
            groups,
            group_of,
            status: vec![Status::Waiting; n],
            started_ms: vec![0.0; n],
            status_log: Vec::new(),
            bars: VecDeque::with_capacity(BARS_PER_UPDATE.min(n)),
            bars_total: 0,
            begun_ms: now,
            ended: None,
        });
        id
    }

    pub fn task_started(&self, id: u64, task: u32, _worker: Option<usize>) {
        let mut state = self.state.lock();
        let now = state.now_ms();
        if let Some(c) = state.current(id) {
            let t = task as usize;
            c.status[t] = Status::Running;
            c.started_ms[t] = now;
            c.groups[c.group_of[t] as usize].running += 1;
            c.log_status(task, Status::Running);
        }
    }

    pub fn task_finished(&self, id: u64, task: u32, worker: Option<usize>, ok: bool) {
        let mut state = self.state.lock();
        let now = state.now_ms();
        if let Some(c) = state.current(id) {
            let t = task as usize;
            let status = if ok { Status::Done } else { Status::Failed };
            c.status[t] = status;
            let group = &mut c.groups[c.group_of[t] as usize];
            group.running -= 1;
            if ok {
                group.done += 1;
            } else {
                group.failed += 1;
            }
            c.log_status(task, status);
            if c.bars.len() == BARS_PER_UPDATE {
                c.bars.pop_front();
            }
            c.bars.push_back(Bar {
                group: c.group_of[t],
                worker: worker.map_or(-1, |w| w as i64),
                start_ms: c.started_ms[t],
                end_ms: now,
                ok,
            });
            c.bars_total += 1;
        }
    }

    pub fn end(&self, id: u64, ok: bool) {
        let mut state = self.state.lock();
        let now = state.now_ms();
        if let Some(c) = state.current(id) {
            c.ended = Some((now, ok));
        }
    }

    pub(crate) fn record_sample(&self, reading: Reading) {
        let mut state = self.state.lock();
        let at_ms = state.now_ms();
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
        let state = self.state.lock();
        let c = state.compute.as_ref()?;
        (c.spec.labels.len() <= GRAPH_TASK_LIMIT).then(|| Drawable {
            labels: c.spec.labels.clone(),
            edges: c.spec.edges.clone(),
        })
    }

    /// Everything that changed since `cursor`, as one JSON update, and the cursor after it.
    pub fn update(&self, mut cursor: Cursor) -> (Value, Cursor) {
        let mut state = self.state.lock();
        let now = state.now_ms();
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
        let Some(c) = state.compute.as_ref() else {
            return (
                json!({ "now": round(now), "compute": null, "samples": samples, "processes": processes }),
                cursor,
            );
        };
        let fresh = cursor.compute != Some(c.id);
        if fresh {
            cursor = Cursor {
                compute: Some(c.id),
                statuses: 0,
                bars: 0,
                ..cursor
            };
        }
        let per_task = c.spec.labels.len() <= GRAPH_TASK_LIMIT;
        let statuses: Vec<Value> = if per_task {
            c.status_log[cursor.statuses..]
                .iter()
                .map(|(task, status)| json!([task, *status as u8]))
                .collect()
        } else {
            Vec::new()
        };
        cursor.statuses = c.status_log.len();
        let unsent = c.bars_total.saturating_sub(cursor.bars).min(c.bars.len());
        let bars: Vec<Value> = c
            .bars
            .range(c.bars.len() - unsent..)
            .map(|b| json!([b.group, b.worker, round(b.start_ms), round(b.end_ms), b.ok]))
            .collect();
        cursor.bars = c.bars_total;
        let groups: Vec<Value> = c
            .groups
            .iter()
            .map(|g| json!({ "name": &*g.name, "total": g.total, "running": g.running, "done": g.done, "failed": g.failed }))
            .collect();
        let update = json!({
            "now": round(now),
            "compute": {
                "id": c.id,
                "fresh": fresh,
                "tasks": c.spec.labels.len(),
                "workers": c.spec.workers,
                "begun": round(c.begun_ms),
                "ended": c.ended.map(|(at, _)| round(at)),
                "ok": c.ended.map(|(_, ok)| ok),
                "per_task_graph": per_task,
                "groups": groups,
                "statuses": statuses,
                "bars": bars,
            },
            "samples": samples,
            "processes": processes,
        });
        (update, cursor)
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(labels: &[&str], edges: &[(u32, u32)]) -> ComputeSpec {
        ComputeSpec {
            labels: labels.iter().map(|l| Arc::from(*l)).collect(),
            edges: edges.to_vec(),
            workers: 2,
        }
    }

    #[test]
    fn updates_carry_only_what_changed_since_the_cursor() {
        let hub = Hub::new();
        let id = hub.begin(spec(&["square", "square", "add"], &[(0, 2), (1, 2)]));
        hub.task_started(id, 0, Some(0));
        let (first, cursor) = hub.update(Cursor::default());
        assert_eq!(first["compute"]["fresh"], true);
        assert_eq!(first["compute"]["statuses"], json!([[0, 1]]));
        assert_eq!(first["compute"]["groups"][0]["running"], 1);
        hub.task_finished(id, 0, Some(0), true);
        let (second, cursor) = hub.update(cursor);
        assert_eq!(second["compute"]["fresh"], false);
        assert_eq!(second["compute"]["statuses"], json!([[0, 2]]));
        assert_eq!(second["compute"]["bars"].as_array().unwrap().len(), 1);
        assert_eq!(second["compute"]["groups"][0]["done"], 1);
        let (third, _) = hub.update(cursor);
        assert!(third["compute"]["statuses"].as_array().unwrap().is_empty());
    }

    #[test]
    fn a_newer_computation_replaces_the_shown_one_and_stale_events_are_ignored() {
        let hub = Hub::new();
        let old = hub.begin(spec(&["a"], &[]));
        let (_, cursor) = hub.update(Cursor::default());
        let new = hub.begin(spec(&["b", "b"], &[(0, 1)]));
        hub.task_started(old, 0, None);
        hub.task_started(new, 0, Some(1));
        hub.task_finished(new, 0, Some(1), false);
        hub.end(new, false);
        let (update, _) = hub.update(cursor);
        let compute = &update["compute"];
        assert_eq!(compute["id"], new);
        assert_eq!(compute["fresh"], true);
        assert_eq!(compute["groups"][0]["failed"], 1);
        assert_eq!(compute["ok"], false);
        assert_eq!(compute["statuses"], json!([[0, 1], [0, 3]]));
    }

    #[test]
    fn large_graphs_are_shown_per_function_only() {
        let hub = Hub::new();
        let labels = vec!["inc"; GRAPH_TASK_LIMIT + 1];
        let id = hub.begin(spec(&labels, &[]));
        hub.task_started(id, 5, Some(0));
        let (update, _) = hub.update(Cursor::default());
        assert_eq!(update["compute"]["per_task_graph"], false);
        assert!(update["compute"]["statuses"].as_array().unwrap().is_empty());
        assert!(hub.graph().is_none());
    }

    #[test]
    fn a_large_computation_keeps_no_record_per_task_beyond_the_latest_bars() {
        let hub = Hub::new();
        let n = 3 * BARS_PER_UPDATE;
        let id = hub.begin(spec(&vec!["t"; n], &[]));
        for task in 0..n as u32 {
            hub.task_started(id, task, Some(0));
            hub.task_finished(id, task, Some(0), true);
        }
        {
            let state = hub.state.lock();
            let compute = state.compute.as_ref().unwrap();
            assert!(compute.status_log.is_empty());
            assert_eq!(compute.bars.len(), BARS_PER_UPDATE);
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
        let id = hub.begin(spec(&vec!["t"; n], &[]));
        for task in 0..n as u32 {
            hub.task_started(id, task, Some(0));
            hub.task_finished(id, task, Some(0), true);
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
