//! Graphviz DOT text of the same nodes and edges, for users who do have Graphviz.

use std::fmt::Write;

use crate::collapse::{Drawn, Shape};
use crate::RankDir;

pub(crate) fn write(drawn: &Drawn, rankdir: RankDir) -> String {
    let mut dot = String::from("digraph belated {\n");
    let direction = match rankdir {
        RankDir::TopBottom => "TB",
        RankDir::LeftRight => "LR",
    };
    // Writing to a String cannot fail, so the results of writeln! are ignored.
    let _ = writeln!(dot, "  rankdir={direction};");
    for (v, node) in drawn.nodes.iter().enumerate() {
        let shape = match node.shape {
            Shape::Circle => "circle",
            Shape::Box => "box",
        };
        let label = node.label.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(dot, "  n{v} [shape={shape}, label=\"{label}\"];");
    }
    for (a, b) in &drawn.edges {
        let _ = writeln!(dot, "  n{a} -> n{b};");
    }
    dot.push_str("}\n");
    dot
}
