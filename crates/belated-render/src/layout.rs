//! A layered layout of an acyclic graph, in the Sugiyama style:
//! 1. layers by longest path from the sources, so every edge points to a later layer;
//! 2. edges spanning several layers pass through dummy points, one per layer crossed;
//! 3. a few barycenter sweeps order each layer to reduce crossings;
//! 4. nodes move toward the mean position of their neighbours, then are packed so that nodes of one
//!    layer never overlap (layers never overlap by construction).
//!
//! Every step is linear or `n log n` in nodes plus edges, so ten thousand tasks take milliseconds.

use crate::collapse::{Drawn, Shape};
use crate::RankDir;

const CHAR_WIDTH: f64 = 7.2;
const NODE_GAP: f64 = 18.0;
const LAYER_GAP: f64 = 44.0;
const MARGIN: f64 = 12.0;
const DUMMY_WIDTH: f64 = 6.0;
const SWEEPS: usize = 8;
// Odd, so the last pass pulls from above: a result box then sits under its own task.
const PLACEMENT_PASSES: usize = 9;

/// Where everything goes, in picture coordinates.
#[derive(Debug)]
pub(crate) struct Placed {
    /// Centre and size of each drawn node.
    pub(crate) centers: Vec<(f64, f64)>,
    pub(crate) sizes: Vec<(f64, f64)>,
    /// Each edge as a polyline from its source's border to its target's border.
    pub(crate) paths: Vec<Vec<(f64, f64)>>,
    pub(crate) width: f64,
    pub(crate) height: f64,
}

pub(crate) fn node_size(label: &str, shape: Shape) -> (f64, f64) {
    let text = label.chars().count() as f64 * CHAR_WIDTH;
    match shape {
        Shape::Circle => ((text + 26.0).max(44.0), 40.0),
        Shape::Box if label.is_empty() => (26.0, 20.0),
        Shape::Box => (text + 16.0, 24.0),
    }
}

pub(crate) fn layout(drawn: &Drawn, rankdir: RankDir) -> Placed {
    let n = drawn.nodes.len();
    let sizes: Vec<(f64, f64)> = drawn
        .nodes
        .iter()
        .map(|node| node_size(&node.label, node.shape))
        .collect();
    // Lay out top to bottom; left to right is the same layout with the axes exchanged.
    let along = |size: (f64, f64)| match rankdir {
        RankDir::TopBottom => size,
        RankDir::LeftRight => (size.1, size.0),
    };

    let layer = longest_path_layers(n, &drawn.edges);
    let mut graph = Layered::new(n, &layer);
    let edge_chains: Vec<Vec<usize>> = drawn
        .edges
        .iter()
        .map(|&(a, b)| graph.connect(a, b))
        .collect();
    graph.order();

    let widths: Vec<f64> = (0..graph.len())
        .map(|v| {
            if v < n {
                along(sizes[v]).0
            } else {
                DUMMY_WIDTH
            }
        })
        .collect();
    let xs = graph.place(&widths);
    let layer_heights: Vec<f64> = graph
        .layers
        .iter()
        .map(|members| {
            members
                .iter()
                .filter(|&&v| v < n)
                .map(|&v| along(sizes[v]).1)
                .fold(0.0, f64::max)
        })
        .collect();
    let mut layer_y = Vec::with_capacity(layer_heights.len());
    let mut y = MARGIN;
    for height in &layer_heights {
        layer_y.push(y + height / 2.0);
        y += height + LAYER_GAP;
    }
    let extent_y = y - LAYER_GAP + MARGIN;
    let min_x = (0..graph.len())
        .map(|v| xs[v] - widths[v] / 2.0)
        .fold(f64::INFINITY, f64::min);
    let shift = if min_x.is_finite() {
        MARGIN - min_x
    } else {
        MARGIN
    };
    let extent_x = (0..graph.len())
        .map(|v| xs[v] + widths[v] / 2.0 + shift)
        .fold(0.0, f64::max)
        + MARGIN;

    let point = |v: usize| (xs[v] + shift, layer_y[graph.layer[v]]);
    let oriented = |(x, y): (f64, f64)| match rankdir {
        RankDir::TopBottom => (x, y),
        RankDir::LeftRight => (y, x),
    };
    let centers: Vec<(f64, f64)> = (0..n).map(|v| oriented(point(v))).collect();
    let paths = edge_chains
        .iter()
        .map(|chain| {
            let first = chain[0];
            let last = chain[chain.len() - 1];
            let mut points = Vec::with_capacity(chain.len());
            let (x, y) = point(first);
            points.push(oriented((x, y + along(sizes[first]).1 / 2.0)));
            points.extend(
                chain[1..chain.len() - 1]
                    .iter()
                    .map(|&v| oriented(point(v))),
            );
            let (x, y) = point(last);
            points.push(oriented((x, y - along(sizes[last]).1 / 2.0)));
            points
        })
        .collect();
    let (width, height) = oriented((extent_x.max(2.0 * MARGIN), extent_y.max(2.0 * MARGIN)));
    Placed {
        centers,
        sizes,
        paths,
        width,
        height,
    }
}

fn longest_path_layers(n: usize, edges: &[(usize, usize)]) -> Vec<usize> {
    let mut indegree = vec![0usize; n];
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); n];
    for &(a, b) in edges {
        indegree[b] += 1;
        out[a].push(b);
    }
    let mut layer = vec![0usize; n];
    let mut ready: Vec<usize> = (0..n).filter(|&v| indegree[v] == 0).rev().collect();
    while let Some(v) = ready.pop() {
        for &next in &out[v] {
            layer[next] = layer[next].max(layer[v] + 1);
            indegree[next] -= 1;
            if indegree[next] == 0 {
                ready.push(next);
            }
        }
    }
    layer
}

/// The graph with dummy points, every edge joining consecutive layers.
struct Layered {
    layer: Vec<usize>,
    up: Vec<Vec<usize>>,
    down: Vec<Vec<usize>>,
    layers: Vec<Vec<usize>>,
}

impl Layered {
    fn new(n: usize, layer: &[usize]) -> Self {
        Layered {
            layer: layer.to_vec(),
            up: vec![Vec::new(); n],
            down: vec![Vec::new(); n],
            layers: Vec::new(),
        }
    }

    fn len(&self) -> usize {
        self.layer.len()
    }

    /// Joins `a` to `b` through one dummy per layer between them; returns the chain of points.
    fn connect(&mut self, a: usize, b: usize) -> Vec<usize> {
        let mut chain = vec![a];
        let mut previous = a;
        for l in self.layer[a] + 1..self.layer[b] {
            let dummy = self.layer.len();
            self.layer.push(l);
            self.up.push(Vec::new());
            self.down.push(Vec::new());
            self.link(previous, dummy);
            chain.push(dummy);
            previous = dummy;
        }
        self.link(previous, b);
        chain.push(b);
        chain
    }

    fn link(&mut self, a: usize, b: usize) {
        self.down[a].push(b);
        self.up[b].push(a);
    }

    /// Orders each layer: first in the order nodes were given (which follows the graph's construction),
    /// then by barycenter sweeps downward and upward.
    fn order(&mut self) {
        let depth = self.layer.iter().copied().max().map_or(0, |d| d + 1);
        self.layers = vec![Vec::new(); depth];
        for v in 0..self.len() {
            self.layers[self.layer[v]].push(v);
        }
        let mut position = vec![0.0f64; self.len()];
        for members in &self.layers {
            for (i, &v) in members.iter().enumerate() {
                position[v] = i as f64;
            }
        }
        for sweep in 0..SWEEPS {
            let downward = sweep % 2 == 0;
            let order: Vec<usize> = if downward {
                (1..depth).collect()
            } else {
                (0..depth.saturating_sub(1)).rev().collect()
            };
            for l in order {
                let neighbours = if downward { &self.up } else { &self.down };
                let mut keyed: Vec<(f64, usize)> = self.layers[l]
                    .iter()
                    .map(|&v| {
                        let around = &neighbours[v];
                        let key = if around.is_empty() {
                            position[v]
                        } else {
                            around.iter().map(|&u| position[u]).sum::<f64>() / around.len() as f64
                        };
                        (key, v)
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
                for (i, &(_, v)) in keyed.iter().enumerate() {
                    position[v] = i as f64;
                }
                self.layers[l] = keyed.into_iter().map(|(_, v)| v).collect();
            }
        }
    }

    /// Horizontal centres: each layer packed left to right, then nodes pulled toward their neighbours'
    /// mean, alternately from above and below, always re-packed so that they keep their order and gaps.
    fn place(&self, widths: &[f64]) -> Vec<f64> {
        let mut x = vec![0.0f64; self.len()];
        for members in &self.layers {
            let desired: Vec<f64> = vec![0.0; members.len()];
            pack(members, widths, &desired, &mut x);
        }
        for pass in 0..PLACEMENT_PASSES {
            let downward = pass % 2 == 0;
            let layer_order: Vec<usize> = if downward {
                (0..self.layers.len()).collect()
            } else {
                (0..self.layers.len()).rev().collect()
            };
            for l in layer_order {
                let members = &self.layers[l];
                let neighbours = if downward { &self.up } else { &self.down };
                let desired: Vec<f64> = members
                    .iter()
                    .map(|&v| {
                        let around = &neighbours[v];
                        if around.is_empty() {
                            x[v]
                        } else {
                            around.iter().map(|&u| x[u]).sum::<f64>() / around.len() as f64
                        }
                    })
                    .collect();
                pack(members, widths, &desired, &mut x);
            }
        }
        x
    }
}

/// Places `members` (in order) as close to `desired` as their widths and gaps allow: pushed right where
/// they would overlap, then shifted together so that they sit, on average, where they want to be.
fn pack(members: &[usize], widths: &[f64], desired: &[f64], x: &mut [f64]) {
    let mut right_edge = f64::NEG_INFINITY;
    for (i, &v) in members.iter().enumerate() {
        let half = widths[v] / 2.0;
        let centre = desired[i].max(right_edge + NODE_GAP + half);
        x[v] = centre;
        right_edge = centre + half;
    }
    if members.is_empty() {
        return;
    }
    let shift = members
        .iter()
        .zip(desired)
        .map(|(&v, d)| d - x[v])
        .sum::<f64>()
        / members.len() as f64;
    for &v in members {
        x[v] += shift;
    }
}
