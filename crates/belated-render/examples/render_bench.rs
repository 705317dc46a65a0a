//! Layout + SVG (+ PNG) time for tree reductions of 100, 1k and 10k tasks, drawn in full (no
//! collapsing), and Graphviz `dot -Tsvg` on the same graph when `dot` is on PATH:
//! `cargo run --release -p belated-render --example render_bench`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use belated_render::{render, to_dot, to_png, Options, Task, TaskGraph, TaskKind};

/// A binary tree reduction with about `n` tasks: `n/2` leaves `load`, pairwise `add` up to one root.
fn tree(n: usize) -> TaskGraph {
    let call = |label: &str| Task {
        label: label.into(),
        kind: TaskKind::Call,
        status: None,
    };
    let mut tasks: Vec<Task> = (0..n.div_ceil(2)).map(|_| call("load")).collect();
    let mut edges = Vec::new();
    let mut layer: Vec<u32> = (0..tasks.len() as u32).collect();
    while layer.len() > 1 {
        let mut next = Vec::new();
        for pair in layer.chunks(2) {
            if let [a, b] = pair {
                tasks.push(call("add"));
                let id = tasks.len() as u32 - 1;
                edges.push((*a, id));
                edges.push((*b, id));
                next.push(id);
            } else {
                next.push(pair[0]);
            }
        }
        layer = next;
    }
    TaskGraph { tasks, edges }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let has_dot = Command::new("dot")
        .arg("-V")
        .stderr(Stdio::null())
        .status()
        .is_ok();
    let options = Options {
        collapse_above: usize::MAX,
        ..Options::default()
    };
    println!("| tasks | belated SVG | belated PNG | graphviz dot -Tsvg |");
    println!("|---:|---:|---:|---:|");
    for n in [100, 1_000, 10_000] {
        let graph = tree(n);
        let start = Instant::now();
        let picture = render(&graph, &options)?;
        let svg_time = start.elapsed();
        let start = Instant::now();
        let png = to_png(&picture.svg)?;
        let png_time = start.elapsed();
        let dot_time = if has_dot {
            let text = to_dot(&graph, &options)?;
            let start = Instant::now();
            let mut child = Command::new("dot")
                .arg("-Tsvg")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()?;
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(text.as_bytes())?;
            child.wait()?;
            format!("{:.0} ms", start.elapsed().as_secs_f64() * 1e3)
        } else {
            "not installed".to_string()
        };
        println!(
            "| {} | {:.1} ms | {:.0} ms ({} KB) | {dot_time} |",
            graph.tasks.len(),
            svg_time.as_secs_f64() * 1e3,
            png_time.as_secs_f64() * 1e3,
            png.len() / 1024
        );
    }
    Ok(())
}
