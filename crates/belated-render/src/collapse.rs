//! From tasks to the nodes drawn: validation, collapsing of sibling groups, and the circle-plus-box
//! expansion of calls.

use rustc_hash::FxHashMap;

use crate::{RenderError, Status, TaskGraph, TaskKind};

/// Graphs of more tasks than this have interchangeable siblings drawn once. Chosen so that every graph
/// of the dask tutorial and any graph a person can read node by node is drawn in full, while a map over
/// thousands of items becomes one node with a count instead of a picture thousands of nodes wide.
pub const COLLAPSE_ABOVE: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    Circle,
    Box,
}

#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) label: String,
    pub(crate) shape: Shape,
    pub(crate) status: Option<Status>,
    /// The task this node draws (the first of a collapsed group).
    pub(crate) task: u32,
}

/// The nodes and edges to lay out.
#[derive(Debug)]
pub(crate) struct Drawn {
    pub(crate) nodes: Vec<Node>,
    pub(crate) edges: Vec<(usize, usize)>,
    pub(crate) collapsed: Vec<(String, usize)>,
}

pub(crate) fn prepare(graph: &TaskGraph, collapse_above: usize) -> Result<Drawn, RenderError> {
    let n = graph.tasks.len();
    for &(a, b) in &graph.edges {
        if a as usize >= n || b as usize >= n {
            return Err(RenderError::UnknownTask(a, b));
        }
    }
    check_acyclic(graph)?;

    // Representative task of each task, after collapsing.
    let mut representative: Vec<u32> = (0..n as u32).collect();
    let mut counts = vec![1usize; n];
    let mut collapsed = Vec::new();
    if n > collapse_above {
        let mut deps: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
        for &(a, b) in &graph.edges {
            deps[b as usize].push(a);
            dependents[a as usize].push(b);
        }
        for list in deps.iter_mut().chain(dependents.iter_mut()) {
            list.sort_unstable();
            list.dedup();
        }
        /// Label, kind, dependencies and dependents: tasks alike in all four are interchangeable.
        type Signature<'a> = (&'a str, TaskKind, &'a [u32], &'a [u32]);
        let mut groups: FxHashMap<Signature, u32> = FxHashMap::default();
        for task in 0..n {
            let t = &graph.tasks[task];
            let signature = (
                t.label.as_str(),
                t.kind,
                deps[task].as_slice(),
                dependents[task].as_slice(),
            );
            let first = *groups.entry(signature).or_insert(task as u32);
            representative[task] = first;
            if first != task as u32 {
                counts[first as usize] += 1;
                counts[task] = 0;
            }
        }
        for (task, &count) in graph.tasks.iter().zip(&counts) {
            if count > 1 {
                collapsed.push((task.label.clone(), count));
            }
        }
    }

    // Node index of each drawn task's circle (or box), and of its result box.
    let mut nodes = Vec::new();
    let mut top = vec![usize::MAX; n];
    let mut result = vec![usize::MAX; n];
    let mut edges = Vec::new();
    for task in 0..n {
        if counts[task] == 0 {
            continue;
        }
        let t = &graph.tasks[task];
        let label = if counts[task] > 1 {
            format!("{} ×{}", visible(&t.label), counts[task])
        } else {
            visible(&t.label)
        };
        match t.kind {
            TaskKind::Call => {
                top[task] = nodes.len();
                nodes.push(Node {
                    label,
                    shape: Shape::Circle,
                    status: t.status,
                    task: task as u32,
                });
                result[task] = nodes.len();
                nodes.push(Node {
                    label: String::new(),
                    shape: Shape::Box,
                    status: t.status,
                    task: task as u32,
                });
                edges.push((top[task], result[task]));
            }
            TaskKind::Data => {
                top[task] = nodes.len();
                result[task] = nodes.len();
                nodes.push(Node {
                    label,
                    shape: Shape::Box,
                    status: t.status,
                    task: task as u32,
                });
            }
        }
    }
    let mut seen = rustc_hash::FxHashSet::default();
    for &(a, b) in &graph.edges {
        let (a, b) = (
            representative[a as usize] as usize,
            representative[b as usize] as usize,
        );
        let edge = (result[a], top[b]);
        if seen.insert(edge) {
            edges.push(edge);
        }
    }
    Ok(Drawn {
        nodes,
        edges,
        collapsed,
    })
}

fn check_acyclic(graph: &TaskGraph) -> Result<(), RenderError> {
    let n = graph.tasks.len();
    let mut indegree = vec![0u32; n];
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    for &(a, b) in &graph.edges {
        indegree[b as usize] += 1;
        out[a as usize].push(b);
    }
    let mut ready: Vec<u32> = (0..n as u32)
        .filter(|&t| indegree[t as usize] == 0)
        .collect();
    let mut visited = 0;
    while let Some(t) = ready.pop() {
        visited += 1;
        for &next in &out[t as usize] {
            indegree[next as usize] -= 1;
            if indegree[next as usize] == 0 {
                ready.push(next);
            }
        }
    }
    match (0..n).find(|&t| indegree[t] > 0) {
        Some(t) if visited < n => Err(RenderError::Cycle(t as u32)),
        _ => Ok(()),
    }
}

/// A label as it can be drawn: control characters (which XML cannot hold, or which a one-line label
/// cannot show) and the non-characters U+FFFE and U+FFFF are written as escapes, as Python's `repr`
/// writes them (`\x01`, `\n`, `\uffff`). Everything else is kept; SVG and DOT escape their own syntax.
pub(crate) fn visible(label: &str) -> String {
    let mut out = String::with_capacity(label.len());
    for ch in label.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ if ch.is_control() => out.push_str(&format!("\\x{:02x}", ch as u32)),
            '\u{fffe}' | '\u{ffff}' => out.push_str(&format!("\\u{:04x}", ch as u32)),
            _ => out.push(ch),
        }
    }
    out
}
