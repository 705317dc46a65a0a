//! Arguments of delayed calls: plain values and delayed values, interchangeably.
//!
//! A plain value is captured in the calling task itself instead of becoming a node of its own, so
//! `square.call(3)` is one task (as in dask's pictures) and costs no extra scheduling. A delayed value
//! becomes a dependency. Each argument remembers where its inputs sit in the task's dependency list, so a
//! task reads its arguments by index, with no lookup by key.

use std::ops::Range;
use std::sync::Arc;

use crate::task::{downcast, NodeRef, TaskError, Value};
use crate::{Data, Delayed};

/// Something that can stand for an argument of type `T` in a delayed call: a `T` itself, a
/// [`Delayed<T>`] (owned or borrowed), or, for a `Vec<T>` parameter, a `Vec` or slice of `Delayed<T>`
/// (like passing a list of delayed values to a dask function).
pub trait IntoArg<T> {
    #[doc(hidden)]
    fn into_arg(self) -> Arg<T>;
}

/// An argument on its way into a task; see [`IntoArg`].
#[doc(hidden)]
pub struct Arg<T>(Source<T>);

impl<T> std::fmt::Debug for Arg<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Source::Literal(_) => "Arg::Literal",
            Source::One(_) => "Arg::Delayed",
            Source::Many(..) => "Arg::List",
        })
    }
}

/// Builds a `T` from the inputs an argument owns.
type Gather<T> = fn(&[Value]) -> Result<T, TaskError>;

enum Source<T> {
    Literal(T),
    One(NodeRef),
    Many(Vec<NodeRef>, Gather<T>),
}

/// An argument placed in a task: the literal, or the range of the task's inputs it reads.
pub(crate) enum Slot<T> {
    Literal(T),
    One(usize),
    Many(Range<usize>, Gather<T>),
}

impl<T: Data> Arg<T> {
    /// How many dependencies [`Arg::place`] will add; lets a call size its dependency list exactly,
    /// which the engine then keeps as a boxed slice without reallocating.
    pub(crate) fn dep_count(&self) -> usize {
        match &self.0 {
            Source::Literal(_) => 0,
            Source::One(_) => 1,
            Source::Many(nodes, _) => nodes.len(),
        }
    }

    /// Appends this argument's dependencies to the task's list and says where they went.
    pub(crate) fn place(self, deps: &mut Vec<NodeRef>) -> Slot<T> {
        match self.0 {
            Source::Literal(value) => Slot::Literal(value),
            Source::One(node) => {
                deps.push(node);
                Slot::One(deps.len() - 1)
            }
            Source::Many(nodes, gather) => {
                let start = deps.len();
                deps.extend(nodes);
                Slot::Many(start..deps.len(), gather)
            }
        }
    }
}

impl<T: Data> Slot<T> {
    pub(crate) fn get(&self, inputs: &[Value]) -> Result<T, TaskError> {
        match self {
            Slot::Literal(value) => Ok(value.clone()),
            Slot::One(index) => downcast(&inputs[*index]),
            Slot::Many(range, gather) => gather(&inputs[range.clone()]),
        }
    }
}

fn gather_vec<T: Data>(inputs: &[Value]) -> Result<Vec<T>, TaskError> {
    inputs.iter().map(downcast).collect()
}

impl<T: Data> IntoArg<T> for T {
    fn into_arg(self) -> Arg<T> {
        Arg(Source::Literal(self))
    }
}

impl<T: Data> IntoArg<T> for Delayed<T> {
    fn into_arg(self) -> Arg<T> {
        Arg(Source::One(self.node))
    }
}

impl<T: Data> IntoArg<T> for &Delayed<T> {
    fn into_arg(self) -> Arg<T> {
        Arg(Source::One(Arc::clone(&self.node)))
    }
}

impl<T: Data> IntoArg<Vec<T>> for Vec<Delayed<T>> {
    fn into_arg(self) -> Arg<Vec<T>> {
        Arg(Source::Many(
            self.into_iter().map(|d| d.node).collect(),
            gather_vec::<T>,
        ))
    }
}

impl<T: Data> IntoArg<Vec<T>> for &[Delayed<T>] {
    fn into_arg(self) -> Arg<Vec<T>> {
        Arg(Source::Many(
            self.iter().map(|d| Arc::clone(&d.node)).collect(),
            gather_vec::<T>,
        ))
    }
}

impl<T: Data> IntoArg<Vec<T>> for &Vec<Delayed<T>> {
    fn into_arg(self) -> Arg<Vec<T>> {
        self.as_slice().into_arg()
    }
}

impl<T: Data> IntoArg<Vec<T>> for Vec<&Delayed<T>> {
    fn into_arg(self) -> Arg<Vec<T>> {
        Arg(Source::Many(
            self.into_iter().map(|d| Arc::clone(&d.node)).collect(),
            gather_vec::<T>,
        ))
    }
}
