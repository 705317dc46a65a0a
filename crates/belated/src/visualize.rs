//! Pictures of graphs through `belated-render`: SVG, PNG or Graphviz DOT, with no Graphviz needed.
//!
//! The picture shows exactly what a computation of the same values would run: the plan is flattened
//! the same way, so shared tasks appear once, and each task is labelled with its key's name part.

use std::path::Path;

use belated_core::{Plan, TaskId};
use belated_render::{render, to_dot, to_png, Format, Options, Task, TaskGraph, TaskKind};

use crate::compute::Collection;
use crate::task::{NodeRef, TaskError};
use crate::{Delayed, Error};

impl<T> Delayed<T> {
    /// Draws this value's graph to `path`, in the format its extension names (`.svg`, `.png`, `.dot`).
    ///
    /// ```
    /// use belated::delayed;
    /// fn square(x: i64) -> i64 {
    ///     x * x
    /// }
    /// let res = delayed(square).call(3) + delayed(square).call(4);
    /// let path = std::env::temp_dir().join(format!("belated-doc-{}.svg", std::process::id()));
    /// res.visualize(&path)?;
    /// assert!(std::fs::read_to_string(&path).unwrap().contains("square"));
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), belated::Error>(())
    /// ```
    pub fn visualize(&self, path: impl AsRef<Path>) -> Result<(), Error> {
        write_picture(std::slice::from_ref(&self.node), path.as_ref())
    }

    /// The graph as SVG text.
    pub fn to_svg(&self) -> Result<String, Error> {
        Ok(render(&self.task_graph(), &Options::default())?.svg)
    }

    /// The graph as Graphviz DOT text.
    pub fn to_dot(&self) -> Result<String, Error> {
        Ok(to_dot(&self.task_graph(), &Options::default())?)
    }

    /// The graph in `belated-render`'s terms, to draw with other [`render::Options`](crate::render).
    pub fn task_graph(&self) -> TaskGraph {
        task_graph(std::slice::from_ref(&self.node))
    }
}

/// Draws the graph of everything in `collection` together, like `dask.visualize(a, b)`.
pub fn visualize<C: Collection>(collection: C, path: impl AsRef<Path>) -> Result<(), Error> {
    write_picture(&crate::compute::roots_of(&collection), path.as_ref())
}

fn write_picture(roots: &[NodeRef], path: &Path) -> Result<(), Error> {
    let graph = task_graph(roots);
    let options = Options::default();
    let bytes = match Format::from_path(path)? {
        Format::Svg => render(&graph, &options)?.svg.into_bytes(),
        Format::Png => to_png(&render(&graph, &options)?.svg)?,
        Format::Dot => to_dot(&graph, &options)?.into_bytes(),
    };
    std::fs::write(path, bytes).map_err(|source| Error::Write {
        path: path.to_path_buf(),
        source,
    })
}

fn task_graph(roots: &[NodeRef]) -> TaskGraph {
    // Flattening only fails past u32::MAX tasks, far beyond anything drawable.
    let plan = Plan::flatten::<TaskError>(roots).expect("a drawable graph fits in u32 ids");
    let tasks = plan
        .nodes
        .iter()
        .map(|node| Task {
            label: node.payload().name().to_string(),
            kind: if node.payload().is_literal() {
                TaskKind::Data
            } else {
                TaskKind::Call
            },
            status: None,
        })
        .collect();
    let mut edges = Vec::with_capacity(plan.graph.len());
    for task in plan.graph.tasks() {
        let mut deps: Vec<TaskId> = plan.graph.deps(task).to_vec();
        // A value passed twice to one call is one arrow in the picture.
        deps.sort_unstable();
        deps.dedup();
        edges.extend(deps.into_iter().map(|dep| (dep.0, task.0)));
    }
    TaskGraph { tasks, edges }
}
