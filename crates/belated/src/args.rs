//! Arguments of delayed calls: plain values and delayed values, interchangeably.
//!
//! A plain value is captured in the calling task itself instead of becoming a node of its own, so
//! `square.call(3)` is one task (as in dask's pictures) and costs no extra scheduling. A delayed value
//! becomes a dependency. A task's inputs arrive in the order its arguments placed their dependencies,
//! so each argument takes the next ones (by value: see [`crate::task::Inputs`]), with no lookup by key.
//!
//! A parameter of type `Arc<T>` takes a [`Delayed<T>`] (or a list of them, for `Vec<Arc<T>>`) by
//! sharing: the task gets the engine's own handle on the value, so no consumer copies it, and one
//! that needs it mutable can still have it without a copy when it is the last (`Arc::make_mut`,
//! `Arc::unwrap_or_clone`). Rust has no sound way to lend a plain `&T` to a function whose type only
//! says `Fn(&'static T)`, so `Arc<T>` is how a task borrows.

use std::sync::Arc;

use crate::task::{next_input, share, take, Inputs, NodeRef, TaskError, Value};
use crate::{Data, Delayed};

/// Something that can stand for an argument of type `T` in a delayed call: a `T` itself, a
/// [`Delayed<T>`] (owned or borrowed), or, for a `Vec<T>` parameter, a `Vec` or slice of `Delayed<T>`
/// (like passing a list of delayed values to a dask function). For a parameter of type `Arc<T>` (or
/// `Vec<Arc<T>>`), a `Delayed<T>` (or a list of them) is shared with the task instead of copied.
///
/// ```
/// use std::sync::Arc;
/// use belated::{delayed, Delayed};
///
/// let data = delayed(|| vec![1u64; 1 << 20]).call();
/// // Each reader shares the one vector; by value, all but the last would get a copy.
/// let sum = delayed(|v: Arc<Vec<u64>>| v.iter().sum::<u64>());
/// let max = delayed(|v: Arc<Vec<u64>>| v.iter().copied().max());
/// assert_eq!((sum.call(&data) + sum.call(&data)).compute()?, 2 << 20);
/// assert_eq!(max.call(&data).compute()?, Some(1));
/// let total = delayed(|parts: Vec<Arc<Vec<u64>>>| parts.iter().map(|p| p.len()).sum::<usize>());
/// let parts: Vec<Delayed<Vec<u64>>> = vec![data.clone(), data];
/// assert_eq!(total.call(&parts).compute()?, 2 << 20);
/// # Ok::<(), belated::Error>(())
/// ```
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
            Source::One(..) => "Arg::Delayed",
            Source::Many(..) => "Arg::List",
        })
    }
}

/// Builds a `T` from the next input: takes it, or shares it as an `Arc`.
type Convert<T> = fn(Value) -> Result<T, TaskError>;

/// Builds a `T` from the next `n` inputs.
type Gather<T> = fn(&mut Inputs<'_>, usize) -> Result<T, TaskError>;

enum Source<T> {
    Literal(T),
    One(NodeRef, Convert<T>),
    Many(Vec<NodeRef>, Gather<T>),
}

/// An argument placed in a task: the literal, or how many of the task's inputs it takes.
pub(crate) enum Slot<T> {
    Literal(T),
    One(Convert<T>),
    Many(usize, Gather<T>),
}

impl<T: Data> Arg<T> {
    /// How many dependencies [`Arg::place`] will add; lets a call size its dependency list exactly,
    /// which the engine then keeps as a boxed slice without reallocating.
    pub(crate) fn dep_count(&self) -> usize {
        match &self.0 {
            Source::Literal(_) => 0,
            Source::One(..) => 1,
            Source::Many(nodes, _) => nodes.len(),
        }
    }

    /// Appends this argument's dependencies to the task's list. The task must then [`Slot::get`] its
    /// arguments in the order they were placed.
    pub(crate) fn place(self, deps: &mut Vec<NodeRef>) -> Slot<T> {
        match self.0 {
            Source::Literal(value) => Slot::Literal(value),
            Source::One(node, convert) => {
                deps.push(node);
                Slot::One(convert)
            }
            Source::Many(nodes, gather) => {
                let count = nodes.len();
                deps.extend(nodes);
                Slot::Many(count, gather)
            }
        }
    }
}

impl<T: Data> Slot<T> {
    /// The argument's value, from its next inputs; a literal is cloned, since the graph keeps it.
    pub(crate) fn get(&self, inputs: &mut Inputs<'_>) -> Result<T, TaskError> {
        match self {
            Slot::Literal(value) => Ok(value.clone()),
            Slot::One(convert) => convert(next_input(inputs)?),
            Slot::Many(count, gather) => gather(inputs, *count),
        }
    }
}

fn gather_vec<T: Data>(inputs: &mut Inputs<'_>, count: usize) -> Result<Vec<T>, TaskError> {
    gather(inputs, count, take)
}

/// `count` inputs converted, into a `Vec` sized once (a collect through `Result` could not know
/// the length, and would grow a fan-in of 100,000 inputs by copying it over and over).
fn gather<T>(
    inputs: &mut Inputs<'_>,
    count: usize,
    convert: Convert<T>,
) -> Result<Vec<T>, TaskError> {
    let mut gathered = Vec::with_capacity(count);
    for _ in 0..count {
        gathered.push(convert(next_input(inputs)?)?);
    }
    Ok(gathered)
}

fn gather_shared<T: Data>(inputs: &mut Inputs<'_>, count: usize) -> Result<Vec<Arc<T>>, TaskError> {
    gather(inputs, count, share)
}

impl<T: Data> IntoArg<T> for T {
    fn into_arg(self) -> Arg<T> {
        Arg(Source::Literal(self))
    }
}

impl<T: Data> IntoArg<T> for Delayed<T> {
    fn into_arg(self) -> Arg<T> {
        Arg(Source::One(self.node, take::<T>))
    }
}

impl<T: Data> IntoArg<T> for &Delayed<T> {
    fn into_arg(self) -> Arg<T> {
        Arg(Source::One(Arc::clone(&self.node), take::<T>))
    }
}

impl<T: Data> IntoArg<Arc<T>> for Delayed<T> {
    fn into_arg(self) -> Arg<Arc<T>> {
        Arg(Source::One(self.node, share::<T>))
    }
}

impl<T: Data> IntoArg<Arc<T>> for &Delayed<T> {
    fn into_arg(self) -> Arg<Arc<T>> {
        Arg(Source::One(Arc::clone(&self.node), share::<T>))
    }
}

impl<T: Data> IntoArg<Vec<Arc<T>>> for Vec<Delayed<T>> {
    fn into_arg(self) -> Arg<Vec<Arc<T>>> {
        Arg(Source::Many(
            self.into_iter().map(|d| d.node).collect(),
            gather_shared::<T>,
        ))
    }
}

impl<T: Data> IntoArg<Vec<Arc<T>>> for &[Delayed<T>] {
    fn into_arg(self) -> Arg<Vec<Arc<T>>> {
        Arg(Source::Many(
            self.iter().map(|d| Arc::clone(&d.node)).collect(),
            gather_shared::<T>,
        ))
    }
}

impl<T: Data> IntoArg<Vec<Arc<T>>> for &Vec<Delayed<T>> {
    fn into_arg(self) -> Arg<Vec<Arc<T>>> {
        self.as_slice().into_arg()
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
