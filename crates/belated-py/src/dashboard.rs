//! `belated.dashboard()`: serves the live dashboard, and while it runs every computation reports to it.

use std::sync::Arc;

use belated_core::{Graph, Observer, TaskId};
use belated_dashboard::{ComputeSpec, Dashboard, DashboardError, GraphRenderer, Hub};
use parking_lot::Mutex;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rustc_hash::FxHashMap;

use crate::errors::{catch_panics, BelatedError};
use crate::task::{Arg, Key, Op, TaskNode};

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

/// Reports one computation to the dashboard.
pub(crate) struct HubObserver {
    hub: Arc<Hub>,
    id: u64,
}

impl HubObserver {
    /// `None` when no dashboard runs.
    pub(crate) fn begin(
        py: Python<'_>,
        nodes: &[Arc<TaskNode>],
        graph: &Graph,
        workers: usize,
    ) -> Option<Arc<Self>> {
        let hub = Arc::clone(&DASHBOARD.lock().as_ref()?.hub);
        // A call's label is its function's name, which costs Python calls to find: ask once per
        // function, not once per task (a map over a million items calls one function).
        let mut by_function: FxHashMap<*mut pyo3::ffi::PyObject, Arc<str>> = FxHashMap::default();
        let labels = nodes
            .iter()
            .map(|node| {
                let task = node.payload();
                match (&task.key, &task.op) {
                    (
                        Key::Unique { .. },
                        Op::Call {
                            func: Arg::Value(function),
                            ..
                        },
                    ) => Arc::clone(
                        by_function
                            .entry(function.as_ptr())
                            .or_insert_with(|| Arc::from(task.label(py))),
                    ),
                    _ => Arc::from(task.label(py)),
                }
            })
            .collect();
        let edges = graph
            .tasks()
            .flat_map(|task| graph.deps(task).iter().map(move |dep| (dep.0, task.0)))
            .collect();
        let id = hub.begin(ComputeSpec {
            labels,
            edges,
            workers,
        });
        Some(Arc::new(HubObserver { hub, id }))
    }

    pub(crate) fn end(&self, succeeded: bool) {
        self.hub.end(self.id, succeeded);
    }
}

impl Observer for HubObserver {
    fn task_started(&self, task: TaskId, worker: Option<usize>) {
        self.hub.task_started(self.id, task.0, worker);
    }

    fn task_finished(&self, task: TaskId, worker: Option<usize>, succeeded: bool) {
        self.hub.task_finished(self.id, task.0, worker, succeeded);
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
    pub(crate) fn begin(py: Python<'_>, nodes: &[Arc<TaskNode>], graph: &Graph) -> Self {
        DashboardReport {
            observer: HubObserver::begin(py, nodes, graph, 0),
            tasks: nodes.len(),
        }
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
