//! [`Delayed<T>`]: a typed handle on one node of the build-side graph.
//!
//! Invariants:
//! - A `Delayed<T>` only ever points at a node whose task produces a `T`; every constructor is typed, so
//!   the engine's untyped values always downcast to what the handle says.
//! - Handles are immutable and cheap to clone (one `Arc`); building never runs user code and never
//!   copies a graph, so a call costs O(number of its arguments) whatever the graph's size.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::args::IntoArg;
use crate::task::{node, short_name, Inputs, Name, NodeRef, TaskError, Value};
use crate::Data;

/// A value that will be computed later, by a task in a graph of tasks.
///
/// Build one with [`delayed`](crate::delayed) (`delayed(square).call(3)`), [`Delayed::value`],
/// operators (`a + b`), [`Delayed::map`] or by collecting; get its value with [`Delayed::compute`] or
/// [`compute`](crate::compute()).
///
/// ```
/// use belated::{delayed, Delayed};
///
/// fn square(x: i64) -> i64 {
///     x * x
/// }
///
/// let x_sq = delayed(square).call(3);
/// let y_sq = delayed(square).call(4);
/// let res: Delayed<i64> = x_sq + y_sq;
/// assert!(res.key().starts_with("add-"));
/// assert_eq!(res.compute()?, 25);
/// # Ok::<(), belated::Error>(())
/// ```
pub struct Delayed<T> {
    pub(crate) node: NodeRef,
    // `fn() -> T` rather than `T`: a handle owns no `T`, so it is Send, Sync and Clone whatever `T` is.
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for Delayed<T> {
    fn clone(&self) -> Self {
        Delayed {
            node: Arc::clone(&self.node),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Delayed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Delayed({:?})", self.key())
    }
}

impl<T> fmt::Display for Delayed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

impl<T> Delayed<T> {
    pub(crate) fn from_node(node: NodeRef) -> Self {
        Delayed {
            node,
            _type: PhantomData,
        }
    }

    /// The task's key, `name-token`, as shown in errors and pictures: `square-3f2a9c0d5e1b7a46`.
    pub fn key(&self) -> String {
        self.node.payload().key()
    }

    /// The key's name part: the function's name (`square`), the operator (`add`) or the value's type.
    pub fn name(&self) -> &str {
        self.node.payload().name()
    }

    /// How many delayed values this one takes as inputs directly (plain arguments are not counted).
    pub fn dependencies(&self) -> usize {
        self.node.deps().len()
    }
}

impl<T: Send + Sync + 'static> Delayed<T> {
    /// A value handed to the graph as it is, like dask's `delayed(obj)`. The graph holds it once however
    /// many calls use it (a plain argument is instead captured by each call), and keeps it so that it
    /// can be computed again: each task that takes it by value gets its own clone. For big data, make
    /// it in a task (`delayed(load).call()`), whose result moves, or wrap it in an `Arc`.
    ///
    /// ```
    /// let data = belated::Delayed::value(vec![1, 2, 3]);
    /// let total = data.map(|v: Vec<i32>| v.iter().sum::<i32>());
    /// assert_eq!(total.compute()?, 6);
    /// # Ok::<(), belated::Error>(())
    /// ```
    pub fn value(value: T) -> Self {
        let name = Name::Static(short_name(std::any::type_name::<T>()));
        let value: Value = Arc::new(value);
        Delayed::from_node(node(name, true, Vec::new(), move |_: &mut Inputs<'_>| {
            Ok(Arc::clone(&value))
        }))
    }

    /// A task named `name` that depends on `deps` and computes its value with `body`.
    pub(crate) fn from_body(
        name: Name,
        deps: Vec<NodeRef>,
        body: impl Fn(&mut Inputs<'_>) -> Result<T, TaskError> + Send + Sync + 'static,
    ) -> Self {
        Delayed::from_node(node(name, false, deps, move |inputs: &mut Inputs<'_>| {
            body(inputs).map(|value| Arc::new(value) as Value)
        }))
    }
}

impl<T: Data> Delayed<T> {
    /// A delayed `f(value)`, named after `f`.
    ///
    /// ```
    /// let x = belated::Delayed::value(3);
    /// assert_eq!(x.map(|x: i32| x * 2).compute()?, 6);
    /// # Ok::<(), belated::Error>(())
    /// ```
    pub fn map<U, F>(&self, f: F) -> Delayed<U>
    where
        F: Fn(T) -> U + Send + Sync + 'static,
        U: Send + Sync + 'static,
    {
        let mut deps = Vec::with_capacity(1);
        let slot = IntoArg::<T>::into_arg(self).place(&mut deps);
        Delayed::from_body(Name::of::<F>(), deps, move |inputs| {
            Ok(f(slot.get(inputs)?))
        })
    }

    /// Like [`Delayed::map`] for a fallible `f`: an `Err` fails the computation, naming this task.
    pub fn try_map<U, E, F>(&self, f: F) -> Delayed<U>
    where
        F: Fn(T) -> Result<U, E> + Send + Sync + 'static,
        E: Into<TaskError>,
        U: Send + Sync + 'static,
    {
        let mut deps = Vec::with_capacity(1);
        let slot = IntoArg::<T>::into_arg(self).place(&mut deps);
        Delayed::from_body(Name::of::<F>(), deps, move |inputs| {
            f(slot.get(inputs)?).map_err(Into::into)
        })
    }

    /// Both values as a pair, from one task named `tuple`.
    ///
    /// ```
    /// let pair = belated::Delayed::value(1).zip("one".to_string());
    /// assert_eq!(pair.compute()?, (1, "one".to_string()));
    /// # Ok::<(), belated::Error>(())
    /// ```
    pub fn zip<U: Data>(&self, other: impl IntoArg<U>) -> Delayed<(T, U)> {
        let (a, b) = (IntoArg::<T>::into_arg(self), other.into_arg());
        let mut deps = Vec::with_capacity(1 + b.dep_count());
        let a = a.place(&mut deps);
        let b = b.place(&mut deps);
        Delayed::from_body(Name::Static("tuple"), deps, move |inputs| {
            Ok((a.get(inputs)?, b.get(inputs)?))
        })
    }
}

/// Collects delayed values into one delayed `Vec`, in order, from one task named `list`.
///
/// ```
/// use belated::Delayed;
/// let squares: Delayed<Vec<i32>> = (1..4).map(|i| Delayed::value(i).map(|x: i32| x * x)).collect();
/// assert_eq!(squares.compute()?, vec![1, 4, 9]);
/// # Ok::<(), belated::Error>(())
/// ```
impl<T: Data> FromIterator<Delayed<T>> for Delayed<Vec<T>> {
    fn from_iter<I: IntoIterator<Item = Delayed<T>>>(iter: I) -> Self {
        let items: Vec<Delayed<T>> = iter.into_iter().collect();
        let mut deps = Vec::with_capacity(items.len());
        let slot = items.into_arg().place(&mut deps);
        Delayed::from_body(Name::Static("list"), deps, move |inputs| slot.get(inputs))
    }
}

impl<'a, T: Data> FromIterator<&'a Delayed<T>> for Delayed<Vec<T>> {
    fn from_iter<I: IntoIterator<Item = &'a Delayed<T>>>(iter: I) -> Self {
        iter.into_iter().cloned().collect()
    }
}

/// Sums delayed values in one task named `sum`, like `delayed(sum)(values)`.
///
/// ```
/// use belated::Delayed;
/// let total: Delayed<i64> = (1..=10).map(Delayed::value).sum();
/// assert_eq!(total.compute()?, 55);
/// # Ok::<(), belated::Error>(())
/// ```
impl<T: Data + std::iter::Sum> std::iter::Sum<Delayed<T>> for Delayed<T> {
    fn sum<I: Iterator<Item = Delayed<T>>>(iter: I) -> Self {
        let items: Vec<Delayed<T>> = iter.collect();
        let mut deps = Vec::with_capacity(items.len());
        let slot = IntoArg::<Vec<T>>::into_arg(items).place(&mut deps);
        Delayed::from_body(Name::Static("sum"), deps, move |inputs| {
            Ok(slot.get(inputs)?.into_iter().sum())
        })
    }
}

impl<'a, T: Data + std::iter::Sum> std::iter::Sum<&'a Delayed<T>> for Delayed<T> {
    fn sum<I: Iterator<Item = &'a Delayed<T>>>(iter: I) -> Self {
        iter.cloned().sum()
    }
}
