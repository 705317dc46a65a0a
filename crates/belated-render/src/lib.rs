//! Pictures of belated task graphs, drawn like dask's: a circle per task, labelled by its function
//! name, with an arrow to a box for its result; arrows run in data-flow direction, layer by layer.
//!
//! Everything is pure Rust: a layered (Sugiyama-style) layout ([`layout`]), SVG and DOT text, and PNG
//! through resvg with an embedded DejaVu Sans, so no Graphviz and no system font is needed.
//!
//! Policy: graphs with more than [`COLLAPSE_ABOVE`] tasks have each group of interchangeable sibling
//! tasks (same label and kind, same dependencies, same dependents) drawn as one task labelled
//! `name ×count`; [`Picture::collapsed`] lists what was merged so callers can tell the user. Below that
//! size every task is drawn, as dask does.

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
    pub tasks: Vec<Task>,
    pub edges: Vec<(u32, u32)>,
}

#[derive(Debug, Clone)]
pub struct Task {
    /// The function name (key prefix), or for data a short description.
    pub label: String,
    pub kind: TaskKind,
    pub status: Option<Status>,
}

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
    Waiting,
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RankDir {
    /// Top to bottom, as dask draws by default.
    #[default]
    TopBottom,
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

#[derive(Debug, Clone)]
pub struct Options {
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
    pub svg: String,
    pub width: f64,
    pub height: f64,
    /// `(label, tasks merged)` for every collapsed group.
    pub collapsed: Vec<(String, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("edge ({0}, {1}) refers to a task that does not exist")]
    UnknownTask(u32, u32),
    #[error("the graph has a cycle through task {0}; only acyclic graphs can be drawn")]
    Cycle(u32),
    #[error("unknown picture format {0:?}; use .svg, .png or .dot")]
    Format(String),
    #[error("unknown rankdir {0:?}; use \"TB\" or \"LR\"")]
    RankDir(String),
    #[error("could not rasterise the picture: {0}")]
    Png(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
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
