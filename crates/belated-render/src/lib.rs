//! Pictures of belated task graphs, drawn like dask's: a circle per task, labelled by its function
//! name, with an arrow to a box for its result; arrows run in data-flow direction, layer by layer.
//!
//! Everything is pure Rust: a layered (Sugiyama-style) layout (module `layout`), SVG and DOT text, and PNG
//! through resvg with an embedded DejaVu Sans, so no Graphviz and no system font is needed.
//!
//! Policy: graphs with more than [`COLLAPSE_ABOVE`] tasks have each group of alike tasks (same label and
//! kind, alike dependencies, alike dependents: the items of a map, at every level of it) drawn as one
//! task labelled `name ×count`; [`Picture::collapsed`] lists what was merged so callers can tell the user. Below that
//! size every task is drawn, as dask does.

#![warn(missing_docs)]

mod collapse;
mod dot;
mod layout;
mod png;
mod svg;

use std::path::Path;

pub use collapse::COLLAPSE_ABOVE;
pub use png::to_png;

/// The graph to draw: tasks and `(dependency, dependent)` edges between their indices.
#[derive(Debug, Clone, Default)]
pub struct TaskGraph {
    /// The tasks, by index.
    pub tasks: Vec<Task>,
    /// `(dependency, dependent)` pairs of task indices.
    pub edges: Vec<(u32, u32)>,
}

/// One task as drawn.
#[derive(Debug, Clone)]
pub struct Task {
    /// The function name (key prefix), or for data a short description.
    pub label: String,
    /// A call or a literal.
    pub kind: TaskKind,
    /// Its state in a live view, or `None` for the plain picture.
    pub status: Option<Status>,
}

/// What a task is, which decides its shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// A function call: a circle, and a box for its result.
    Call,
    /// A literal value: just a box.
    Data,
}

/// Colouring for live views; `None` draws the plain picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Not started.
    Waiting,
    /// Running now.
    Running,
    /// Finished with a result.
    Done,
    /// Finished with an error.
    Failed,
}

/// Which way the layers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RankDir {
    /// Top to bottom, as dask draws by default.
    #[default]
    TopBottom,
    /// Left to right (`rankdir="LR"`).
    LeftRight,
}

impl std::str::FromStr for RankDir {
    type Err = RenderError;

    fn from_str(text: &str) -> Result<Self, RenderError> {
        match text {
            "TB" | "tb" => Ok(RankDir::TopBottom),
            "LR" | "lr" => Ok(RankDir::LeftRight),
            other => Err(RenderError::RankDir(other.to_string())),
        }
    }
}

/// How to draw.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which way the layers run.
    pub rankdir: RankDir,
    /// Collapse sibling groups when the graph has more tasks than this.
    pub collapse_above: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rankdir: RankDir::TopBottom,
            collapse_above: COLLAPSE_ABOVE,
        }
    }
}

/// A drawing. In the SVG, task `i`'s circle (or a literal's box) is the group with id `task-{i}`
/// (for a collapsed group, its first task), so live views can restyle it.
#[derive(Debug, Clone)]
pub struct Picture {
    /// The SVG document.
    pub svg: String,
    /// Its width, in pixels.
    pub width: f64,
    /// Its height, in pixels.
    pub height: f64,
    /// `(label, tasks merged)` for every collapsed group.
    pub collapsed: Vec<(String, usize)>,
}

/// Why a graph could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// An edge names a task index past the end.
    #[error("edge ({0}, {1}) refers to a task that does not exist")]
    UnknownTask(u32, u32),
    /// The graph is not acyclic.
    #[error("the graph has a cycle through task {0}; only acyclic graphs can be drawn")]
    Cycle(u32),
    /// A format name or file extension we do not draw.
    #[error("unknown picture format {0:?}; use .svg, .png or .dot")]
    Format(String),
    /// A rankdir other than `TB` or `LR`.
    #[error("unknown rankdir {0:?}; use \"TB\" or \"LR\"")]
    RankDir(String),
    /// The SVG could not be rasterised.
    #[error("could not rasterise the picture: {0}")]
    Png(String),
}

/// A picture's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Scalable vector graphics.
    Svg,
    /// A raster image, rendered with resvg.
    Png,
    /// Graphviz's DOT source.
    Dot,
}

impl Format {
    /// The format a file name asks for, by its extension.
    pub fn from_path(path: &Path) -> Result<Self, RenderError> {
        let extension = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        Self::from_name(&extension)
    }

    /// The format a name (`svg`, `png`, `dot` or `gv`) asks for.
    pub fn from_name(name: &str) -> Result<Self, RenderError> {
        match name.to_ascii_lowercase().as_str() {
            "svg" => Ok(Format::Svg),
            "png" => Ok(Format::Png),
            "dot" | "gv" => Ok(Format::Dot),
            other => Err(RenderError::Format(other.to_string())),
        }
    }
}

/// Lays the graph out and draws it as SVG.
pub fn render(graph: &TaskGraph, options: &Options) -> Result<Picture, RenderError> {
    let drawn = collapse::prepare(graph, options.collapse_above)?;
    let placed = layout::layout(&drawn, options.rankdir);
    let svg = svg::write(&drawn, &placed);
    Ok(Picture {
        svg,
        width: placed.width,
        height: placed.height,
        collapsed: drawn.collapsed,
    })
}

/// The same picture as Graphviz DOT text, for users who have Graphviz.
pub fn to_dot(graph: &TaskGraph, options: &Options) -> Result<String, RenderError> {
    let drawn = collapse::prepare(graph, options.collapse_above)?;
    Ok(dot::write(&drawn, options.rankdir))
}
