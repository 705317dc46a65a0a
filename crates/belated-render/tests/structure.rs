//! Structural checks of the pictures, by parsing the SVG: nodes, edges, labels, no overlaps, direction.

use belated_render::{
    render, to_dot, to_png, Format, Options, RankDir, RenderError, Status, Task, TaskGraph,
    TaskKind,
};
use proptest::prelude::*;

fn call(label: &str) -> Task {
    Task {
        label: label.to_string(),
        kind: TaskKind::Call,
        status: None,
    }
}

fn fan_in(n: usize, label: &str, last: &str) -> TaskGraph {
    let mut tasks: Vec<Task> = (0..n).map(|_| call(label)).collect();
    tasks.push(call(last));
    TaskGraph {
        tasks,
        edges: (0..n as u32).map(|i| (i, n as u32)).collect(),
    }
}

#[derive(Debug)]
struct Shapes {
    tasks: Vec<(String, [f64; 4])>,
    data: Vec<[f64; 4]>,
    /// First and last point of every edge.
    edges: Vec<((f64, f64), (f64, f64))>,
}

fn parse(svg: &str) -> Shapes {
    let doc = roxmltree::Document::parse(svg).expect("the SVG is well-formed XML");
    let number =
        |node: roxmltree::Node, name: &str| node.attribute(name).unwrap().parse::<f64>().unwrap();
    let mut shapes = Shapes {
        tasks: vec![],
        data: vec![],
        edges: vec![],
    };
    for node in doc.descendants() {
        match (node.tag_name().name(), node.attribute("class")) {
            ("g", Some("node task")) => {
                let ellipse = node.children().find(|c| c.has_tag_name("ellipse")).unwrap();
                let text = node
                    .children()
                    .find(|c| c.has_tag_name("text"))
                    .unwrap()
                    .text()
                    .unwrap()
                    .to_string();
                let (cx, cy, rx, ry) = (
                    number(ellipse, "cx"),
                    number(ellipse, "cy"),
                    number(ellipse, "rx"),
                    number(ellipse, "ry"),
                );
                shapes
                    .tasks
                    .push((text, [cx - rx, cy - ry, cx + rx, cy + ry]));
            }
            ("g", Some("node data")) => {
                let rect = node.children().find(|c| c.has_tag_name("rect")).unwrap();
                let (x, y) = (number(rect, "x"), number(rect, "y"));
                shapes
                    .data
                    .push([x, y, x + number(rect, "width"), y + number(rect, "height")]);
            }
            ("path", Some("edge")) => {
                let points: Vec<(f64, f64)> = node
                    .attribute("d")
                    .unwrap()
                    .split(['M', 'L'])
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap();
                        (x.parse().unwrap(), y.parse().unwrap())
                    })
                    .collect();
                shapes.edges.push((points[0], points[points.len() - 1]));
            }
            _ => {}
        }
    }
    shapes
}

fn assert_no_overlap(shapes: &Shapes) {
    let boxes: Vec<[f64; 4]> = shapes
        .tasks
        .iter()
        .map(|(_, b)| *b)
        .chain(shapes.data.iter().copied())
        .collect();
    for (i, a) in boxes.iter().enumerate() {
        for b in &boxes[i + 1..] {
            let apart = a[2] <= b[0] || b[2] <= a[0] || a[3] <= b[1] || b[3] <= a[1];
            assert!(apart, "nodes overlap: {a:?} and {b:?}");
        }
    }
}

#[test]
fn tutorial_example_1_reads_like_dask() {
    let picture = render(&fan_in(2, "square", "add"), &Options::default()).unwrap();
    let shapes = parse(&picture.svg);
    let mut labels: Vec<&str> = shapes.tasks.iter().map(|(l, _)| l.as_str()).collect();
    labels.sort();
    assert_eq!(labels, ["add", "square", "square"]);
    assert_eq!(shapes.data.len(), 3, "a result box per task");
    assert_eq!(
        shapes.edges.len(),
        5,
        "three task→result arrows and two inputs of add"
    );
    assert!(picture.collapsed.is_empty());
    assert_no_overlap(&shapes);
    let add = &shapes.tasks.iter().find(|(l, _)| l == "add").unwrap().1;
    assert!(
        shapes
            .tasks
            .iter()
            .filter(|(l, _)| l == "square")
            .all(|(_, b)| b[3] < add[1]),
        "squares above add"
    );
}

#[test]
fn tutorial_examples_2_3_and_5_have_every_node_and_edge() {
    for (graph, tasks, edges) in [
        (fan_in(10, "corr", "mean"), 11, 21),
        (fan_in(10, "square", "sum"), 11, 21),
        (
            TaskGraph {
                tasks: (0..10)
                    .map(|_| call("total_func"))
                    .chain((0..10).map(|_| call("count_func")))
                    .collect(),
                edges: vec![],
            },
            20,
            20,
        ),
    ] {
        let shapes = parse(&render(&graph, &Options::default()).unwrap().svg);
        assert_eq!(shapes.tasks.len(), tasks);
        assert_eq!(shapes.data.len(), tasks);
        assert_eq!(shapes.edges.len(), edges);
        assert_no_overlap(&shapes);
    }
}

#[test]
fn literals_are_boxes_with_their_label() {
    let graph = TaskGraph {
        tasks: vec![
            Task {
                label: "int".into(),
                kind: TaskKind::Data,
                status: None,
            },
            call("inc"),
        ],
        edges: vec![(0, 1)],
    };
    let picture = render(&graph, &Options::default()).unwrap();
    let shapes = parse(&picture.svg);
    assert_eq!(
        (shapes.tasks.len(), shapes.data.len(), shapes.edges.len()),
        (1, 2, 2)
    );
    assert!(picture.svg.contains(r#"id="task-0""#) && picture.svg.contains(r#"id="task-1""#));
    assert!(picture.svg.contains(r#"id="result-1""#));
}

#[test]
fn statuses_colour_the_nodes() {
    let mut graph = fan_in(1, "square", "add");
    graph.tasks[0].status = Some(Status::Done);
    graph.tasks[1].status = Some(Status::Running);
    let svg = render(&graph, &Options::default()).unwrap().svg;
    assert!(svg.contains("#4c78a8") && svg.contains("#7bc77e"));
}

#[test]
fn big_maps_collapse_into_one_node_with_a_count() {
    let picture = render(&fan_in(1000, "inc", "sum"), &Options::default()).unwrap();
    assert_eq!(picture.collapsed, vec![("inc".to_string(), 1000)]);
    let shapes = parse(&picture.svg);
    let labels: Vec<&str> = shapes.tasks.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(labels.len(), 2);
    assert!(labels.contains(&"inc ×1000") && labels.contains(&"sum"));
    let full = render(
        &fan_in(1000, "inc", "sum"),
        &Options {
            collapse_above: usize::MAX,
            ..Options::default()
        },
    )
    .unwrap();
    assert!(full.collapsed.is_empty());
    assert_eq!(parse(&full.svg).tasks.len(), 1001);
}

#[test]
fn left_to_right_runs_along_x() {
    let options = Options {
        rankdir: "LR".parse().unwrap(),
        ..Options::default()
    };
    assert_eq!(options.rankdir, RankDir::LeftRight);
    let shapes = parse(&render(&fan_in(3, "square", "add"), &options).unwrap().svg);
    assert!(shapes.edges.iter().all(|(from, to)| from.0 < to.0));
    assert_no_overlap(&shapes);
}

#[test]
fn dot_and_png_outputs() {
    let graph = fan_in(2, "square", "add");
    let dot = to_dot(&graph, &Options::default()).unwrap();
    assert!(dot.starts_with("digraph belated {") && dot.contains("rankdir=TB;"));
    assert_eq!(dot.matches("shape=circle").count(), 3);
    assert_eq!(dot.matches(" -> ").count(), 5);
    let png = to_png(&render(&graph, &Options::default()).unwrap().svg).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(png.len() > 1000, "the picture has content");
}

#[test]
fn any_text_in_a_label_gives_valid_svg_png_and_dot() {
    let control = (0u32..0x20)
        .chain(0x7f..0xa0)
        .chain([0xfffe, 0xffff])
        .filter_map(char::from_u32);
    let hostile = [
        "<script>alert(1)</script>",
        "a & b; &amp; &#0; &#x1;",
        "\"quoted\" 'single'",
        "]]> <![CDATA[ x ]]>",
        "<?xml version='1.0'?> <!-- -->",
        "back\\slash",
        "\u{202e}right-to-left \u{200b} zero width",
        "😀 non-BMP",
    ];
    let labels: Vec<String> = control
        .map(|ch| format!("key{ch}end"))
        .chain(hostile.iter().map(|text| text.to_string()))
        .collect();
    for label in &labels {
        let graph = fan_in(1, label, "add");
        let svg = render(&graph, &Options::default()).unwrap().svg;
        let shapes = parse(&svg);
        let drawn = &shapes.tasks[0].0;
        assert!(
            !drawn.chars().any(char::is_control),
            "{label:?} drawn as {drawn:?}"
        );
        if !label
            .chars()
            .any(|ch| ch.is_control() || ch == '\u{fffe}' || ch == '\u{ffff}')
        {
            assert_eq!(drawn, label, "text that XML can hold is drawn as it is");
        }
        let png = to_png(&svg).unwrap_or_else(|e| panic!("{label:?}: {e}"));
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let dot = to_dot(&graph, &Options::default()).unwrap();
        assert!(
            !dot.chars().any(|ch| ch.is_control() && ch != '\n'),
            "{label:?} in DOT"
        );
    }
    let escaped = &parse(
        &render(&fan_in(1, "a\u{1}b\nc", "add"), &Options::default())
            .unwrap()
            .svg,
    )
    .tasks[0]
        .0;
    assert_eq!(
        escaped, "a\\x01b\\nc",
        "control characters are shown as Python writes them"
    );
}

#[test]
fn bad_input_is_a_clear_error() {
    let unknown = TaskGraph {
        tasks: vec![call("a")],
        edges: vec![(0, 3)],
    };
    assert!(matches!(
        render(&unknown, &Options::default()),
        Err(RenderError::UnknownTask(0, 3))
    ));
    let cycle = TaskGraph {
        tasks: vec![call("a"), call("b")],
        edges: vec![(0, 1), (1, 0)],
    };
    let error = render(&cycle, &Options::default()).unwrap_err();
    assert!(error.to_string().contains("cycle"), "{error}");
    assert!(Format::from_path("graph.jpeg".as_ref())
        .unwrap_err()
        .to_string()
        .contains(".svg, .png or .dot"));
    assert_eq!(Format::from_path("a/b.PNG".as_ref()).unwrap(), Format::Png);
    assert!("XY".parse::<RankDir>().is_err());
}

fn dags() -> impl Strategy<Value = TaskGraph> {
    (1usize..60).prop_flat_map(|n| {
        let edges = prop::collection::vec((0..n as u32, 0..n as u32), 0..(2 * n));
        let labels = prop::collection::vec(
            prop::sample::select(vec!["f", "load", "a_longer_name", "x"]),
            n,
        );
        (edges, labels).prop_map(move |(pairs, labels)| TaskGraph {
            tasks: labels.into_iter().map(call).collect(),
            // Orienting every pair from the smaller index keeps the graph acyclic.
            edges: pairs
                .into_iter()
                .filter(|(a, b)| a != b)
                .map(|(a, b)| (a.min(b), a.max(b)))
                .collect(),
        })
    })
}

proptest! {
    #[test]
    fn random_dags_are_drawn_without_overlaps_and_flow_downwards(graph in dags()) {
        let picture = render(&graph, &Options::default()).unwrap();
        let shapes = parse(&picture.svg);
        prop_assert_eq!(shapes.tasks.len(), graph.tasks.len());
        let mut distinct = graph.edges.clone();
        distinct.sort_unstable();
        distinct.dedup();
        prop_assert_eq!(shapes.edges.len(), graph.tasks.len() + distinct.len());
        assert_no_overlap(&shapes);
        for (from, to) in &shapes.edges {
            prop_assert!(from.1 < to.1, "edge from {:?} to {:?} does not point down", from, to);
        }
    }
}
