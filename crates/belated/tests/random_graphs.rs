//! Random DAGs built through the public API, computed by every scheduler, against a plain sequential
//! evaluation of the same operations.

use std::num::Wrapping;
use std::time::Duration;

use belated::{compute, delayed, Delayed, Error, Options};
use proptest::prelude::*;

type W = Wrapping<i64>;

/// One node of a random graph; indices refer to earlier nodes (taken modulo how many exist).
#[derive(Clone, Debug)]
enum Op {
    Literal(i64),
    Add(usize, usize),
    Mul(usize, usize),
    Neg(usize),
    Scalar(usize, i64),
    /// A three-argument function called with a delayed, a plain and a delayed argument.
    Call(usize, i64, usize),
    /// `sum` over a list of earlier nodes (repeats allowed).
    Sum(Vec<usize>),
    Map(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        any::<i64>().prop_map(Op::Literal),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Add(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Op::Mul(a, b)),
        any::<usize>().prop_map(Op::Neg),
        (any::<usize>(), any::<i64>()).prop_map(|(a, k)| Op::Scalar(a, k)),
        (any::<usize>(), any::<i64>(), any::<usize>()).prop_map(|(a, k, b)| Op::Call(a, k, b)),
        prop::collection::vec(any::<usize>(), 0..5).prop_map(Op::Sum),
        any::<usize>().prop_map(Op::Map),
    ];
    prop::collection::vec(op, 1..80)
}

fn combine(a: W, k: i64, b: W) -> W {
    a * Wrapping(3) + Wrapping(k) - b
}

fn step(x: W) -> W {
    x * x + Wrapping(1)
}

/// The graph through the public API; node 0 is always a literal so every index has a target.
fn build(ops: &[Op]) -> Vec<Delayed<W>> {
    let mut nodes: Vec<Delayed<W>> = vec![Delayed::value(Wrapping(1))];
    let call = delayed(combine);
    for op in ops {
        let at = |i: &usize| &nodes[i % nodes.len()];
        let node = match op {
            Op::Literal(v) => Delayed::value(Wrapping(*v)),
            Op::Add(a, b) => at(a) + at(b),
            Op::Mul(a, b) => at(a) * at(b),
            Op::Neg(a) => -at(a),
            Op::Scalar(a, k) => at(a).zip(*k).map(|(x, k): (W, i64)| x - Wrapping(k)),
            Op::Call(a, k, b) => call.call(at(a), *k, at(b)),
            Op::Sum(list) => list.iter().map(at).sum(),
            Op::Map(a) => at(a).map(step),
        };
        nodes.push(node);
    }
    nodes
}

fn sequential(ops: &[Op]) -> Vec<W> {
    let mut values = vec![Wrapping(1)];
    for op in ops {
        let at = |i: &usize| values[i % values.len()];
        let value = match op {
            Op::Literal(v) => Wrapping(*v),
            Op::Add(a, b) => at(a) + at(b),
            Op::Mul(a, b) => at(a) * at(b),
            Op::Neg(a) => -at(a),
            Op::Scalar(a, k) => at(a) - Wrapping(*k),
            Op::Call(a, k, b) => combine(at(a), *k, at(b)),
            Op::Sum(list) => list.iter().map(at).sum(),
            Op::Map(a) => step(at(a)),
        };
        values.push(value);
    }
    values
}

fn schedulers() -> [Options; 3] {
    let timeout = Duration::from_secs(30);
    [
        Options::inline(),
        Options::new().timeout(timeout),
        Options::threads(3).timeout(timeout),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(150))]

    #[test]
    fn every_scheduler_agrees_with_sequential_evaluation(
        ops in ops(),
        picks in prop::collection::vec(any::<prop::sample::Index>(), 1..6),
    ) {
        let nodes = build(&ops);
        let expected = sequential(&ops);
        let wanted: Vec<usize> = picks.iter().map(|i| i.index(nodes.len())).collect();
        let requested: Vec<&Delayed<W>> = wanted.iter().map(|&i| &nodes[i]).collect();
        let want: Vec<W> = wanted.iter().map(|&i| expected[i]).collect();
        for options in schedulers() {
            prop_assert_eq!(&options.compute(&requested).unwrap(), &want);
        }
        let last = nodes.last().unwrap();
        prop_assert_eq!(compute((last, &nodes[0])).unwrap(), (expected[nodes.len() - 1], expected[0]));
    }

    #[test]
    fn a_panic_anywhere_is_reported_with_that_task_key(ops in ops(), at in any::<prop::sample::Index>()) {
        let mut nodes = build(&ops);
        let victim = at.index(nodes.len());
        let poisoned = nodes[victim].map(|_: W| -> W { panic!("poisoned") });
        nodes.push(poisoned.clone());
        let total: Delayed<W> = nodes.iter().sum();
        for options in schedulers() {
            let err = options.compute(&total).unwrap_err();
            prop_assert!(matches!(err, Error::Panic { .. }), "{:?}", err);
            let key = poisoned.key();
            prop_assert_eq!(err.key(), Some(key.as_str()));
        }
    }
}
