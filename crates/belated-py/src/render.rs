//! Pictures of graphs, through belated-render: `visualize()` and the dashboard's graph view.

use std::sync::Arc;

use belated_core::{Graph, Plan};
use belated_render::{render, to_dot, to_png, Format, Options, RankDir, Task, TaskGraph, TaskKind};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyTuple};

use crate::collect::Collector;
use crate::errors::{catch_panics, to_python};
use crate::task::{Arg, Op, TaskNode};

fn task_graph(py: Python<'_>, nodes: &[Arc<TaskNode>], graph: &Graph) -> TaskGraph {
    TaskGraph {
        tasks: nodes
            .iter()
            .map(|node| Task {
                label: node.payload().label(py),
                kind: match node.payload().op {
                    Op::Value(Arg::Value(_)) => TaskKind::Data,
                    _ => TaskKind::Call,
                },
                status: None,
            })
            .collect(),
        edges: graph
            .tasks()
            .flat_map(|task| graph.deps(task).iter().map(move |dep| (dep.0, task.0)))
            .collect(),
    }
}

/// `(label, count)` for each group of tasks drawn as one node.
type Collapsed = Vec<(String, usize)>;

/// Draws the graphs of the `Delayed` objects in `objs` in `format` ("svg", "png" or "dot"). Returns the
/// picture (text or bytes) and, for each group of tasks drawn as one node, `(label, count)`.
#[pyfunction]
#[pyo3(signature = (objs, format="svg", rankdir="TB", collapse_above=None, traverse=true))]
pub(crate) fn draw<'py>(
    py: Python<'py>,
    objs: &Bound<'py, PyTuple>,
    format: &str,
    rankdir: &str,
    collapse_above: Option<usize>,
    traverse: bool,
) -> PyResult<(Bound<'py, PyAny>, Collapsed)> {
    catch_panics(|| {
        let bad = |e: belated_render::RenderError| PyValueError::new_err(e.to_string());
        let format = Format::from_name(format).map_err(bad)?;
        let options = Options {
            rankdir: rankdir.parse::<RankDir>().map_err(bad)?,
            collapse_above: collapse_above.unwrap_or(belated_render::COLLAPSE_ABOVE),
        };
        let mut collector = Collector::new(traverse);
        collector.args(objs)?;
        let plan =
            Plan::flatten(&collector.deps).map_err(|e| to_python(py, e, |_| String::new()))?;
        let graph = task_graph(py, &plan.nodes, &plan.graph);
        // Layout and rasterising need no Python: let other threads run meanwhile.
        let drawn = py.detach(
            || -> Result<(Vec<u8>, Collapsed), belated_render::RenderError> {
                if format == Format::Dot {
                    return Ok((to_dot(&graph, &options)?.into_bytes(), Vec::new()));
                }
                let picture = render(&graph, &options)?;
                let bytes = match format {
                    Format::Png => to_png(&picture.svg)?,
                    _ => picture.svg.into_bytes(),
                };
                Ok((bytes, picture.collapsed))
            },
        );
        let (bytes, collapsed) = drawn.map_err(bad)?;
        let data = match format {
            Format::Png => PyBytes::new(py, &bytes).into_any(),
            _ => String::from_utf8(bytes)
                .expect("SVG and DOT are text")
                .into_pyobject(py)?
                .into_any(),
        };
        Ok((data, collapsed))
    })
}

/// The dashboard's picture: every task drawn (the dashboard only asks for graphs small enough) with
/// ids `task-{i}` it colours by status.
pub(crate) fn dashboard_svg(labels: &[Arc<str>], edges: &[(u32, u32)]) -> Result<String, String> {
    let graph = TaskGraph {
        tasks: labels
            .iter()
            .map(|label| Task {
                label: label.to_string(),
                kind: TaskKind::Call,
                status: None,
            })
            .collect(),
        edges: edges.to_vec(),
    };
    let options = Options {
        collapse_above: usize::MAX,
        ..Options::default()
    };
    render(&graph, &options)
        .map(|picture| picture.svg)
        .map_err(|e| e.to_string())
}
