//! Draws the graphs of the dask.delayed tutorial's examples to PNG files, to look at:
//! `cargo run --release -p belated-render --example tutorial_pictures -- <folder>`.

use belated_render::{render, to_png, Options, Task, TaskGraph, TaskKind};

fn call(label: &str) -> Task {
    Task {
        label: label.to_string(),
        kind: TaskKind::Call,
        status: None,
    }
}

/// `n` independent calls named by `labels(i)`, all feeding one final call.
fn fan_in(n: usize, labels: impl Fn(usize) -> &'static str, last: &str) -> TaskGraph {
    let mut tasks: Vec<Task> = (0..n).map(|i| call(labels(i))).collect();
    tasks.push(call(last));
    TaskGraph {
        tasks,
        edges: (0..n as u32).map(|i| (i, n as u32)).collect(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let folder = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "pictures".to_string());
    std::fs::create_dir_all(&folder)?;
    let examples = [
        ("example1", fan_in(2, |_| "square", "add")),
        ("example2", fan_in(10, |_| "corr", "mean")),
        (
            "example3",
            fan_in(10, |i| if i % 2 == 1 { "square" } else { "power_3" }, "sum"),
        ),
        ("example4", fan_in(30, |_| "calc_mean", "mean")),
    ];
    for (name, graph) in examples {
        let picture = render(&graph, &Options::default())?;
        let path = format!("{folder}/{name}.png");
        std::fs::write(&path, to_png(&picture.svg)?)?;
        println!(
            "{path}: {} tasks, {:.0}x{:.0}",
            graph.tasks.len(),
            picture.width,
            picture.height
        );
    }
    Ok(())
}
