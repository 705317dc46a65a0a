//! `belated.dashboard()`: serves the live dashboard, and while it runs every computation reports to it.

use std::sync::Arc;

use belated_core::{Graph, Observer, TaskId};
use belated_dashboard::{
    ComputeSpec, Dashboard, DashboardError, GraphRenderer, Hub, Live, GRAPH_TASK_LIMIT,
};
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rustc_hash::FxHashMap;

use crate::errors::{catch_panics, BelatedError};
use crate::gil::pace;
use crate::task::{Arg, Key, Op, PyTask, TaskNode};

struct Running {
    hub: Arc<Hub>,
    server: Dashboard,
    host: String,
    port: u16,
}

static DASHBOARD: Mutex<Option<Running>> = Mutex::new(None);

/// The running dashboard's URL, if one runs.
#[pyfunction]
pub(crate) fn dashboard_url() -> Option<String> {
    DASHBOARD
        .lock()
        .as_ref()
        .map(|running| running.server.url())
}

/// Starts the dashboard (or finds it running at the same address) and returns its URL.
#[pyfunction]
#[pyo3(signature = (host="127.0.0.1", port=8787, token=None))]
pub(crate) fn start_dashboard(host: &str, port: u16, token: Option<String>) -> PyResult<String> {
    catch_panics(|| {
        let mut running = DASHBOARD.lock();
        if let Some(current) = running.as_ref() {
            if current.host == host && (port == 0 || current.port == port) {
                return Ok(current.server.url());
            }
            return Err(BelatedError::new_err(format!(
                "the dashboard already runs at {}; stop it first (belated.dashboard().stop())",
                current.server.url()
            )));
        }
        let hub = Hub::new();
        let renderer: GraphRenderer = Arc::new(crate::render::dashboard_svg);
        let server = Dashboard::start(Arc::clone(&hub), host, port, token, renderer).map_err(
            |e| match e {
                DashboardError::WeakToken(_) => PyValueError::new_err(e.to_string()),
                _ => BelatedError::new_err(e.to_string()),
            },
        )?;
        let url = server.url();
        *running = Some(Running {
            hub,
            port: server.address().port(),
            server,
            host: host.to_string(),
        });
        Ok(url)
    })
}

#[pyfunction]
pub(crate) fn stop_dashboard(py: Python<'_>) {
    let running = DASHBOARD.lock().take();
    // Joining the server thread needs no Python; let other threads run meanwhile.
    py.detach(move || drop(running));
}

/// The tasks of one computation sorted by function, for the dashboard running when it began, as
/// [`belated_core::Plan::flatten_visiting`] shows them. A call's label is its function's name, which
/// costs Python calls to find: the dashboard asks once per function, not once per task (a map over a
/// million items calls one function). Sorting reads only pointers, and is done as the flattening walk
/// visits each node: a pass of its own afterwards missed the cache at every node of a large graph.
pub(crate) struct Grouping {
    hub: Arc<Hub>,
    /// Each task's slot: an index into `firsts`, or [`OTHER`].
    slots: Vec<u32>,
    /// A function's slot, by the function object's address.
    slot_of: FxHashMap<usize, u32>,
    /// Neighbouring tasks mostly call one function: the map's lookup is skipped for them.
    last: Option<(usize, u32)>,
    /// The first task of each slot's function.
    firsts: Vec<usize>,
    /// The tasks labelled other than by their function's name.
    others: Vec<usize>,
}

/// A task whose label is not its function's name, found only with Python.
const OTHER: u32 = u32::MAX;

impl Grouping {
    /// `None` when no dashboard runs.
    pub(crate) fn if_shown() -> Option<Self> {
        let hub = DASHBOARD
            .lock()
            .as_ref()
            .map(|running| Arc::clone(&running.hub))?;
        Some(Grouping {
            hub,
            slots: Vec::new(),
            slot_of: FxHashMap::default(),
            last: None,
            firsts: Vec::new(),
            others: Vec::new(),
        })
    }

    /// Takes the next task, in id order.
    pub(crate) fn visit(&mut self, task: &PyTask) {
        let index = self.slots.len();
        let slot = match (&task.key, &task.op) {
            (
                Key::Unique { .. },
                Op::Call {
                    func: Arg::Value(function),
                    ..
                },
            ) => {
                let address = function.as_ptr() as usize;
                match self.last {
                    Some((seen, slot)) if seen == address => slot,
                    _ => {
                        let firsts = &mut self.firsts;
                        let slot = *self.slot_of.entry(address).or_insert_with(|| {
                            firsts.push(index);
                            (firsts.len() - 1) as u32
                        });
                        self.last = Some((address, slot));
                        slot
                    }
                }
            }
            _ => {
                self.others.push(index);
                OTHER
            }
        };
        self.slots.push(slot);
    }

    /// Visits every task of a graph flattened without this grouping.
    pub(crate) fn visit_all(mut self, nodes: &[Arc<TaskNode>]) -> Self {
        for node in nodes {
            self.visit(node.payload());
        }
        self
    }
}

/// Reports one computation to the dashboard.
pub(crate) struct HubObserver {
    live: Arc<Live>,
}

impl HubObserver {
    /// Shows the computation of `nodes`, grouped by `grouping` as its graph was flattened; `None`
    /// without a grouping (no dashboard ran then).
    pub(crate) fn begin(
        py: Python<'_>,
        grouping: Option<Grouping>,
        nodes: &[Arc<TaskNode>],
        graph: &Graph,
        workers: usize,
    ) -> PyResult<Option<Arc<Self>>> {
        let Some(Grouping {
            hub,
            slots: mut group_of,
            firsts,
            others,
            ..
        }) = grouping
        else {
            return Ok(None);
        };
        // Only graphs small enough to draw need their edges.
        let edges: Vec<(u32, u32)> = if nodes.len() <= GRAPH_TASK_LIMIT {
            graph
                .tasks()
                .flat_map(|task| graph.deps(task).iter().map(move |dep| (dep.0, task.0)))
                .collect()
        } else {
            Vec::new()
        };
        let mut groups: Vec<Arc<str>> = Vec::new();
        let mut by_name = FxHashMap::<Arc<str>, u32>::default();
        let mut group = |label: String| {
            let label: Arc<str> = Arc::from(label);
            *by_name.entry(Arc::clone(&label)).or_insert_with(|| {
                groups.push(label);
                (groups.len() - 1) as u32
            })
        };
        let function_groups: Vec<u32> = firsts
            .iter()
            .map(|&index| group(nodes[index].payload().label(py)))
            .collect();
        py.detach(|| {
            for slot in group_of.iter_mut().filter(|slot| **slot != OTHER) {
                *slot = function_groups[*slot as usize];
            }
        });
        for index in others {
            group_of[index] = group(nodes[index].payload().label(py));
            pace(py)?;
        }
        let live = hub.begin(ComputeSpec {
            groups,
            group_of,
            edges,
            workers,
        });
        Ok(Some(Arc::new(HubObserver { live })))
    }

    pub(crate) fn end(&self, succeeded: bool) {
        self.live.end(succeeded);
    }
}

impl Observer for HubObserver {
    fn task_started(&self, task: TaskId, worker: Option<usize>) {
        self.live.task_started(task.0, worker);
    }

    fn task_finished(&self, task: TaskId, worker: Option<usize>, succeeded: bool) {
        self.live.task_finished(task.0, worker, succeeded);
    }
}

/// What a computation on another engine (Dask distributed, Ray) tells the dashboard: the engine's
/// executor reports tasks as they finish there, by their position in the graph it received.
#[pyclass(module = "belated._belated", frozen)]
pub(crate) struct DashboardReport {
    observer: Option<Arc<HubObserver>>,
    tasks: usize,
}

impl DashboardReport {
    pub(crate) fn begin(py: Python<'_>, nodes: &[Arc<TaskNode>], graph: &Graph) -> PyResult<Self> {
        let grouping = Grouping::if_shown().map(|grouping| grouping.visit_all(nodes));
        Ok(DashboardReport {
            observer: HubObserver::begin(py, grouping, nodes, graph, 0)?,
            tasks: nodes.len(),
        })
    }
}

#[pymethods]
impl DashboardReport {
    /// Marks the tasks at `positions` finished (they ran, elsewhere).
    fn finished(&self, positions: Vec<usize>, succeeded: bool) {
        let Some(observer) = &self.observer else {
            return;
        };
        for position in positions.into_iter().filter(|&p| p < self.tasks) {
            let task = TaskId(position as u32);
            observer.task_started(task, None);
            observer.task_finished(task, None, succeeded);
        }
    }

    fn end(&self, succeeded: bool) {
        if let Some(observer) = &self.observer {
            observer.end(succeeded);
        }
    }
}
