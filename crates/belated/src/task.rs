//! The payload of every build-side node, and how values cross the engine.
//!
//! Invariants:
//! - A node's result is stored as a [`Value`], an `Arc<dyn Any>`; it is only ever downcast to the type
//!   its typed handle ([`crate::Delayed<T>`]) promised, so a failed downcast is a bug in this crate. It is
//!   still reported as a task error rather than trusted with `unsafe` code or a panic.
//! - A task body is `Fn`, not `FnOnce`: the same graph may be computed many times, and each computation
//!   clones the literal arguments it captured.
//! - Tokens come from one process-wide counter run through a bijective mixer, so keys are unique in the
//!   process yet do not look sequential (they only serve people reading pictures and errors).

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use belated_core::{Node, Payload};

/// A task's result inside the engine. Cloning it is one atomic increment whatever `T` is.
pub(crate) type Value = Arc<dyn Any + Send + Sync>;

/// What a user's fallible task may fail with; any `std::error::Error + Send + Sync`, `String` or `&str`.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// A task's inputs, each its own (moved in at its last use, else a clone of the handle), taken in
/// the order the task's arguments were placed.
pub(crate) type Inputs<'a> = std::vec::Drain<'a, Value>;

/// What a task runs. Unsized: it is the last part of its node, which holds it without a box of its own
/// (one allocation per task built, not two).
pub(crate) type Body = dyn Fn(&mut Inputs<'_>) -> Result<Value, TaskError> + Send + Sync;

pub(crate) type NodeRef = Arc<Node<Task>>;

pub(crate) struct Task<B: ?Sized = Body> {
    name: Name,
    token: u64,
    /// A value given to the graph directly, which "running" hands out another reference to.
    literal: bool,
    body: B,
}

impl Payload for Task {}

/// A node running `body` on the results of `deps`.
pub(crate) fn node<B>(name: Name, literal: bool, deps: Vec<NodeRef>, body: B) -> NodeRef
where
    B: Fn(&mut Inputs<'_>) -> Result<Value, TaskError> + Send + Sync + 'static,
{
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let task = Task {
        name,
        token: NEXT.fetch_add(1, Relaxed),
        literal,
        body,
    };
    let node: Arc<Node<Task, Task<B>>> = Node::new(task, deps);
    node
}

impl Task {
    pub(crate) fn name(&self) -> &str {
        self.name.as_str()
    }

    #[cfg_attr(not(feature = "render"), allow(dead_code))]
    pub(crate) fn is_literal(&self) -> bool {
        self.literal
    }

    pub(crate) fn key(&self) -> String {
        format!("{}-{:016x}", self.name.as_str(), mix(self.token))
    }

    pub(crate) fn run(&self, inputs: &mut Vec<Value>) -> Result<Value, TaskError> {
        (self.body)(&mut inputs.drain(..))
    }
}

/// splitmix64's finaliser over a per-process seed: a bijection, so distinct counters give distinct keys.
fn mix(token: u64) -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    let seed = *SEED.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
    });
    let mut z = token.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A task's name, the part of its key before the token. Static names (from type names and operators)
/// cost nothing per task; a custom owned name is shared by every task of one function.
#[derive(Clone)]
pub(crate) enum Name {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Name {
    /// The name of a function or closure type, as a person would write it: `crate::square` is `square`,
    /// `mean::<f64>` is `mean`, and a closure is `lambda`, as dask calls it.
    pub(crate) fn of<F: ?Sized>() -> Name {
        Name::Static(short_name(std::any::type_name::<F>()))
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Name::Static(name) => name,
            Name::Shared(name) => name,
        }
    }
}

impl From<Cow<'static, str>> for Name {
    fn from(name: Cow<'static, str>) -> Self {
        match name {
            Cow::Borrowed(name) => Name::Static(name),
            Cow::Owned(name) => Name::Shared(name.into()),
        }
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last path segment of a type name, without generic arguments. Path separators inside generic
/// arguments (`mean<alloc::vec::Vec<f64>>`) do not count, so the result is always one contiguous,
/// `'static` slice of the input.
pub(crate) fn short_name(full: &'static str) -> &'static str {
    let bytes = full.as_bytes();
    let mut depth = 0usize;
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'<' => depth += 1,
            b'>' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b':') => {
                start = i + 2;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    let last = &full[start..];
    let last = last.split('<').next().unwrap_or(last);
    match last {
        "" => full,
        "{{closure}}" => "lambda",
        _ => last,
    }
}

/// The error a failed downcast reports; reaching it means this crate paired a value with the wrong type.
#[derive(Debug, thiserror::Error)]
#[error("internal error: an input was not of the expected type {expected}")]
pub(crate) struct TypeMismatch {
    expected: &'static str,
}

/// The `T` inside a value: moved out when this was the last handle on it, else cloned.
pub(crate) fn take<T: Clone + Send + Sync + 'static>(value: Value) -> Result<T, TaskError> {
    match value.downcast::<T>() {
        Ok(value) => Ok(Arc::try_unwrap(value).unwrap_or_else(|shared| T::clone(&shared))),
        Err(_) => Err(Box::new(TypeMismatch {
            expected: std::any::type_name::<T>(),
        })),
    }
}

/// The engine's handle on a value, as an `Arc<T>`: shared, never copied.
pub(crate) fn share<T: Send + Sync + 'static>(value: Value) -> Result<Arc<T>, TaskError> {
    value.downcast::<T>().map_err(|_| -> TaskError {
        Box::new(TypeMismatch {
            expected: std::any::type_name::<T>(),
        })
    })
}

/// The next of a task's inputs.
pub(crate) fn next_input(inputs: &mut Inputs<'_>) -> Result<Value, TaskError> {
    inputs.next().ok_or_else(|| -> TaskError {
        "internal error: a task has fewer inputs than arguments".into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic<T>() {}

    #[test]
    fn short_names_read_like_the_source() {
        assert_eq!(short_name("tutorial::square"), "square");
        assert_eq!(short_name("square"), "square");
        assert_eq!(short_name("tutorial::mean<f64>"), "mean");
        assert_eq!(short_name("a::mean<alloc::vec::Vec<f64>>"), "mean");
        assert_eq!(short_name("<i64 as core::ops::arith::Add>::add"), "add");
        assert_eq!(short_name("tutorial::main::{{closure}}"), "lambda");
        assert_eq!(Name::of::<fn()>().as_str(), "fn()");
        let f = generic::<Vec<u8>>;
        fn name_of<F>(_: &F) -> Name {
            Name::of::<F>()
        }
        assert_eq!(name_of(&f).as_str(), "generic");
        assert_eq!(name_of(&|x: i32| x).as_str(), "lambda");
    }

    #[test]
    fn keys_are_unique_and_carry_the_name() {
        let one = |_: &mut Inputs<'_>| Ok(Arc::new(1) as Value);
        let a = node(Name::Static("square"), false, Vec::new(), one);
        let b = node(Name::Static("square"), false, Vec::new(), one);
        let (a, b) = (a.payload().key(), b.payload().key());
        assert!(a.starts_with("square-"));
        assert_eq!(a.len(), "square-".len() + 16);
        assert_ne!(a, b);
    }

    #[test]
    fn a_wrong_downcast_is_an_error_not_a_panic() {
        let value: Value = Arc::new(1i64);
        assert_eq!(take::<i64>(Arc::clone(&value)).unwrap(), 1);
        let err = take::<String>(value).unwrap_err();
        assert!(err.to_string().contains("String"), "{err}");
    }
}
