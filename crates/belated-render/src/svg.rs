//! SVG text for a laid-out graph. Tasks are `<g class="node task" id="task-{i}">` with a `<title>`,
//! results and literals `<g class="node data">`, edges `<path class="edge">` with an arrowhead.

use std::fmt::Write;

use crate::collapse::{Drawn, Shape};
use crate::layout::Placed;
use crate::Status;

fn fill(status: Option<Status>) -> (&'static str, &'static str) {
    match status {
        None => ("#ffffff", "#222222"),
        Some(Status::Waiting) => ("#d4d4d4", "#222222"),
        Some(Status::Running) => ("#7bc77e", "#222222"),
        Some(Status::Done) => ("#4c78a8", "#ffffff"),
        Some(Status::Failed) => ("#e45756", "#ffffff"),
    }
}

pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

pub(crate) fn write(drawn: &Drawn, placed: &Placed) -> String {
    let mut svg = String::with_capacity(200 * drawn.nodes.len() + 1000);
    let (w, h) = (placed.width.ceil(), placed.height.ceil());
    // Writing to a String cannot fail, so the results of write! are ignored throughout.
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12"><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0L10,5L0,10z" fill="#444444"/></marker></defs><rect width="100%" height="100%" fill="#ffffff"/><g class="edges">"##
    );
    for path in &placed.paths {
        svg.push_str(r##"<path class="edge" fill="none" stroke="#444444" stroke-width="1.2" marker-end="url(#arrow)" d=""##);
        for (i, (x, y)) in path.iter().enumerate() {
            let _ = write!(svg, "{}{:.1},{:.1}", if i == 0 { "M" } else { "L" }, x, y);
        }
        svg.push_str("\"/>");
    }
    svg.push_str(r##"</g><g class="nodes">"##);
    for (v, node) in drawn.nodes.iter().enumerate() {
        let (x, y) = placed.centers[v];
        let (width, height) = placed.sizes[v];
        let (background, ink) = fill(node.status);
        let label = escape(&node.label);
        match node.shape {
            Shape::Circle => {
                let _ = write!(
                    svg,
                    r##"<g class="node task" id="task-{task}"><title>{label}</title><ellipse cx="{x:.1}" cy="{y:.1}" rx="{rx:.1}" ry="{ry:.1}" fill="{background}" stroke="#222222" stroke-width="1.2"/><text x="{x:.1}" y="{ty:.1}" text-anchor="middle" fill="{ink}">{label}</text></g>"##,
                    task = node.task,
                    rx = width / 2.0,
                    ry = height / 2.0,
                    ty = y + 4.0,
                );
            }
            Shape::Box => {
                let id = if node.label.is_empty()
                    && matches!(drawn.nodes.get(v.wrapping_sub(1)), Some(prev) if prev.task == node.task && prev.shape == Shape::Circle)
                {
                    format!("result-{}", node.task)
                } else {
                    format!("task-{}", node.task)
                };
                let _ = write!(
                    svg,
                    r##"<g class="node data" id="{id}"><title>{title}</title><rect x="{left:.1}" y="{top:.1}" width="{width:.1}" height="{height:.1}" fill="{background}" stroke="#222222" stroke-width="1.2"/>"##,
                    title = if label.is_empty() {
                        "result".to_string()
                    } else {
                        label.clone()
                    },
                    left = x - width / 2.0,
                    top = y - height / 2.0,
                );
                if !label.is_empty() {
                    let _ = write!(
                        svg,
                        r##"<text x="{x:.1}" y="{ty:.1}" text-anchor="middle" fill="{ink}">{label}</text>"##,
                        ty = y + 4.0
                    );
                }
                svg.push_str("</g>");
            }
        }
    }
    svg.push_str("</g></svg>");
    svg
}
