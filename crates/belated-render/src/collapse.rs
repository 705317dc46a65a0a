//! From tasks to the nodes drawn: validation, collapsing of alike tasks, and the circle-plus-box
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
        let mut first_of_class = FxHashMap::default();
        for (task, class) in interchangeable(graph).into_iter().enumerate() {
            let first = *first_of_class.entry(class).or_insert(task as u32);
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

/// Rounds of [`interchangeable`]'s refinement at most. Real graphs settle in two or three; a bound keeps
/// a pathological one from costing a round per task, and stopping early only merges more.
const MAX_ROUNDS: usize = 8;

/// A class per task; tasks of one class are drawn as one node. Tasks are alike when they have the same
/// label and kind, their dependencies are alike and their dependents are alike: the classes start from
/// label, kind and the classes of the dependencies (from the sources down), then are split, round by
/// round, by the classes of their dependents (from the sinks up) and of their dependencies again, until
/// a round splits nothing. So the items of a map collapse at every level of it
/// (`load ×500 → clean ×500 → sum`), not only where they share their dependencies and dependents.
///
/// The picture stays acyclic: tasks alike from the sources are at the same depth (the longest path
/// from a source), rounds only split classes, so every edge between classes goes deeper.
fn interchangeable(graph: &TaskGraph) -> Vec<u32> {
    let n = graph.tasks.len();
    let mut deps: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut dependents: Vec<Vec<u32>> = vec![Vec::new(); n];
    for &(a, b) in &graph.edges {
        deps[b as usize].push(a);
        dependents[a as usize].push(b);
    }
    let order = topological_order(&deps, &dependents);
    let classes_of = |tasks: &[u32], class: &[u32]| -> Vec<u32> {
        let mut classes: Vec<u32> = tasks.iter().map(|&t| class[t as usize]).collect();
        classes.sort_unstable();
        classes.dedup();
        classes
    };
    let mut class = vec![0u32; n];
    let mut ids: FxHashMap<(&str, TaskKind, Vec<u32>), u32> = FxHashMap::default();
    for &task in &order {
        let t = &graph.tasks[task as usize];
        let signature = (
            t.label.as_str(),
            t.kind,
            classes_of(&deps[task as usize], &class),
        );
        let next = ids.len() as u32;
        class[task as usize] = *ids.entry(signature).or_insert(next);
    }
    let mut count = ids.len();
    for round in 0..MAX_ROUNDS {
        // Each round reads the classes its own pass has given the neighbours, so its result is stable
        // in its direction; two rounds in a row that split nothing mean stable in both.
        let (tasks, neighbours): (Vec<u32>, _) = if round % 2 == 0 {
            (order.iter().rev().copied().collect(), &dependents)
        } else {
            (order.clone(), &deps)
        };
        let mut split = vec![0u32; n];
        let mut ids: FxHashMap<(u32, Vec<u32>), u32> = FxHashMap::default();
        for task in tasks {
            let signature = (
                class[task as usize],
                classes_of(&neighbours[task as usize], &split),
            );
            let next = ids.len() as u32;
            split[task as usize] = *ids.entry(signature).or_insert(next);
        }
        class = split;
        let settled = ids.len() == count;
        count = ids.len();
        if settled && round > 0 {
            break;
        }
    }
    class
}

/// The tasks, each after its dependencies; the graph is known to be acyclic.
fn topological_order(deps: &[Vec<u32>], dependents: &[Vec<u32>]) -> Vec<u32> {
    let mut waiting: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut order: Vec<u32> = (0..deps.len() as u32)
        .filter(|&t| waiting[t as usize] == 0)
        .collect();
    let mut at = 0;
    while at < order.len() {
        for &next in &dependents[order[at] as usize] {
            waiting[next as usize] -= 1;
            if waiting[next as usize] == 0 {
                order.push(next);
            }
        }
        at += 1;
    }
    order
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Task;
    use proptest::prelude::*;

    fn task(label: &str) -> Task {
        Task {
            label: label.to_string(),
            kind: TaskKind::Call,
            status: None,
        }
    }

    /// `width` items through `levels` (`level0`, `level1`...), one chain per item, then a `sum` of all.
    fn map(width: u32, levels: u32) -> TaskGraph {
        let mut tasks = Vec::new();
        let mut edges = Vec::new();
        for item in 0..width {
            for level in 0..levels {
                let id = item * levels + level;
                tasks.push(task(&format!("level{level}")));
                if level > 0 {
                    edges.push((id - 1, id));
                }
            }
        }
        tasks.push(task("sum"));
        let sum = width * levels;
        edges.extend((0..width).map(|item| (item * levels + levels - 1, sum)));
        TaskGraph { tasks, edges }
    }

    fn circles(drawn: &Drawn) -> Vec<&str> {
        let mut labels: Vec<&str> = drawn
            .nodes
            .iter()
            .filter(|node| node.shape == Shape::Circle)
            .map(|node| node.label.as_str())
            .collect();
        labels.sort_unstable();
        labels
    }

    #[test]
    fn every_level_of_a_map_collapses() {
        let drawn = prepare(&map(500, 2), COLLAPSE_ABOVE).unwrap();
        assert_eq!(circles(&drawn), ["level0 ×500", "level1 ×500", "sum"]);
        assert_eq!(
            drawn.collapsed,
            [("level0".to_string(), 500), ("level1".to_string(), 500)]
        );
        // level0 → its box → level1 → its box → sum → its box.
        assert_eq!(drawn.edges.len(), 5);
        let deep = prepare(&map(100, 4), COLLAPSE_ABOVE).unwrap();
        assert_eq!(deep.nodes.len(), 2 * 5);
    }

    #[test]
    fn small_graphs_and_chains_are_drawn_in_full() {
        assert!(prepare(&map(500, 2), usize::MAX)
            .unwrap()
            .collapsed
            .is_empty());
        // One item through 300 steps: every step is at its own depth, so none is like another.
        let chain = prepare(&map(1, 300), COLLAPSE_ABOVE).unwrap();
        assert!(chain.collapsed.is_empty());
        assert_eq!(chain.nodes.len(), 2 * 301);
    }

    #[test]
    fn items_feeding_different_results_stay_apart() {
        // Two maps of 150 items over the same function, each summed by its own `sum`.
        let mut graph = map(150, 1);
        let second = map(150, 1);
        let offset = graph.tasks.len() as u32;
        graph.tasks.extend(second.tasks);
        graph
            .edges
            .extend(second.edges.iter().map(|&(a, b)| (a + offset, b + offset)));
        let drawn = prepare(&graph, COLLAPSE_ABOVE).unwrap();
        // The two sums are alike (same function of alike items), so each level draws once.
        assert_eq!(circles(&drawn), ["level0 ×300", "sum ×2"]);
        // A third function reading the first map's items sets those apart, and so their sum.
        let reader = graph.tasks.len() as u32;
        graph.tasks.push(task("mean"));
        graph.edges.extend((0..150).map(|item| (item, reader)));
        let drawn = prepare(&graph, COLLAPSE_ABOVE).unwrap();
        assert_eq!(
            circles(&drawn),
            ["level0 ×150", "level0 ×150", "mean", "sum", "sum"]
        );
    }

    fn acyclic(nodes: usize, edges: &[(usize, usize)]) -> bool {
        let graph = TaskGraph {
            tasks: (0..nodes).map(|_| task("x")).collect(),
            edges: edges.iter().map(|&(a, b)| (a as u32, b as u32)).collect(),
        };
        check_acyclic(&graph).is_ok()
    }

    proptest! {
        /// Whatever collapses, every task is drawn once, alike tasks share a label and kind, every
        /// dependency is an edge of the picture, and the picture has no cycle.
        #[test]
        fn collapsing_keeps_the_graph(
            labels in proptest::collection::vec(0..3u8, 1..80),
            picks in proptest::collection::vec((0..80usize, 0..80usize), 0..200),
        ) {
            let n = labels.len();
            let edges: Vec<(u32, u32)> = picks
                .into_iter()
                .map(|(a, b)| (a % n, b % n))
                .filter(|(a, b)| a < b)
                .map(|(a, b)| (a as u32, b as u32))
                .collect();
            let graph = TaskGraph {
                tasks: labels.iter().map(|l| task(&format!("f{l}"))).collect(),
                edges,
            };
            let drawn = prepare(&graph, 0).unwrap();
            let circles: Vec<&Node> =
                drawn.nodes.iter().filter(|node| node.shape == Shape::Circle).collect();
            let count = |node: &Node| {
                node.label.rsplit_once(" ×").map_or(1, |(_, count)| count.parse().unwrap())
            };
            prop_assert_eq!(circles.iter().map(|node| count(node)).sum::<usize>(), n);
            for node in &circles {
                let label = &graph.tasks[node.task as usize].label;
                let prefix = format!("{label} ×");
                prop_assert!(node.label == *label || node.label.starts_with(&prefix));
            }
            prop_assert!(acyclic(drawn.nodes.len(), &drawn.edges));
            let class = interchangeable(&graph);
            for &(a, b) in &graph.edges {
                let drawn_of = |t: u32| drawn.nodes.iter().position(|node| {
                    node.shape == Shape::Circle && class[node.task as usize] == class[t as usize]
                });
                let (from, to) = (drawn_of(a).unwrap(), drawn_of(b).unwrap());
                // From the dependency's result box (just after its circle) to the dependent's circle.
                prop_assert!(drawn.edges.contains(&(from + 1, to)));
            }
        }
    }
}
