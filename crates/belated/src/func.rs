//! Lazy functions: [`delayed`] turns a function of 0 to 6 arguments into one whose calls build tasks.
//!
//! The arity is read off the function's type ([`Signature`]), so `delayed(square).call(3)` and
//! `delayed(corr).call(a, b)` both type-check without naming it. Closures need their parameter types
//! written out (`delayed(|x: i64| x + 1)`), because the signature is what picks the arity.
//!
//! Async functions go through [`delayed_async`], which awaits each call's future on a runtime the
//! caller names ([`BlockOn`]). Rust cannot bound a type by "not a `Future`", so `delayed` itself accepts
//! an async function too, and its task's value is the future, unawaited; since such a future is not
//! `Clone`, computing it, or passing it to another call, does not compile:
//!
//! ```compile_fail
//! async fn fetch(id: u32) -> u32 {
//!     id
//! }
//! let page = belated::delayed(fetch).call(1);
//! page.compute(); // error: the future is not `Clone`, so not `Data`
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use crate::args::IntoArg;
use crate::task::{Name, TaskError};
use crate::{Data, Delayed};

/// A function made lazy by [`delayed`]: `call` builds a task instead of running it. Reusable, like a
/// function decorated with `@delayed`; cloning shares the function.
pub struct DelayedFn<F, Args, R> {
    f: Arc<F>,
    name: Name,
    _signature: PhantomData<fn(Args) -> R>,
}

impl<F, Args, R> Clone for DelayedFn<F, Args, R> {
    fn clone(&self) -> Self {
        DelayedFn {
            f: Arc::clone(&self.f),
            name: self.name.clone(),
            _signature: PhantomData,
        }
    }
}

impl<F, Args, R> fmt::Debug for DelayedFn<F, Args, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DelayedFn({:?})", self.name)
    }
}

/// Functions of 0 to 6 arguments that [`delayed`] accepts; `Args` is the tuple of their parameter
/// types. Implemented for every `Fn` that is `Send + Sync + 'static`: fn items, and closures that own
/// what they capture.
///
/// ```compile_fail
/// fn seven(a: u8, b: u8, c: u8, d: u8, e: u8, f: u8, g: u8) -> u8 {
///     a + b + c + d + e + f + g
/// }
/// // error: `delayed` takes functions of at most 6 arguments
/// let lazy = belated::delayed(seven);
/// ```
#[diagnostic::on_unimplemented(
    message = "`delayed` takes functions of at most 6 arguments, `Send + Sync + 'static`; `{Self}` is not one",
    label = "a function of more than 6 arguments, or one that is not `Send + Sync + 'static`",
    note = "pass more than 6 values as one tuple or struct argument"
)]
pub trait Signature<Args, R>: Send + Sync + 'static {}

/// Makes `f` lazy: its calls return [`Delayed`] values and build a graph instead of running.
///
/// Tasks are named after the function (`square`, or `lambda` for a closure; see
/// [`DelayedFn::named`]). Each argument may be a plain value or a delayed one; see
/// [`IntoArg`](crate::IntoArg).
///
/// ```
/// use belated::delayed;
///
/// fn square(x: i64) -> i64 {
///     x * x
/// }
/// fn power_3(x: i64) -> i64 {
///     x * x * x
/// }
/// fn sum(values: Vec<i64>) -> i64 {
///     values.iter().sum()
/// }
///
/// let (square, power_3) = (delayed(square), delayed(power_3));
/// let parts: Vec<_> = (1..=10)
///     .map(|i| if i % 2 == 0 { square.call(i) } else { power_3.call(i) })
///     .collect();
/// let res = delayed(sum).call(parts);
/// assert!(res.key().starts_with("sum-"));
/// assert_eq!(res.compute()?, 1445);
/// # Ok::<(), belated::Error>(())
/// ```
pub fn delayed<F, Args, R>(f: F) -> DelayedFn<F, Args, R>
where
    F: Signature<Args, R>,
{
    DelayedFn {
        f: Arc::new(f),
        name: Name::of::<F>(),
        _signature: PhantomData,
    }
}

impl<F, Args, R> DelayedFn<F, Args, R> {
    /// Names its tasks `name` instead of after the function, e.g. to give a closure a meaningful key.
    pub fn named(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Name::from(name.into());
        self
    }

    /// The name its tasks get, the part of their keys before the token.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }
}

macro_rules! arities {
    ($( ($($arg:ident: $A:ident),+) )+) => {$(
        impl<F, $($A,)+ R> Signature<($($A,)+), R> for F
        where
            F: Fn($($A),+) -> R + Send + Sync + 'static,
        {
        }

        impl<F, $($A,)+ R> DelayedFn<F, ($($A,)+), R>
        where
            F: Fn($($A),+) -> R + Send + Sync + 'static,
            $($A: Data,)+
            R: Send + Sync + 'static,
        {
            /// A delayed call of the function; each argument is a value or a delayed value.
            #[allow(clippy::too_many_arguments)]
            pub fn call(&self, $($arg: impl IntoArg<$A>),+) -> Delayed<R> {
                $(let $arg = $arg.into_arg();)+
                let mut deps = Vec::with_capacity(0 $(+ $arg.dep_count())+);
                $(let $arg = $arg.place(&mut deps);)+
                let f = Arc::clone(&self.f);
                Delayed::from_body(self.name.clone(), deps, move |inputs| {
                    Ok(f($($arg.get(inputs)?),+))
                })
            }
        }

        impl<F, $($A,)+ T, E> DelayedFn<F, ($($A,)+), Result<T, E>>
        where
            F: Fn($($A),+) -> Result<T, E> + Send + Sync + 'static,
            $($A: Data,)+
            T: Send + Sync + 'static,
            E: Into<TaskError> + 'static,
        {
            /// A delayed call of a fallible function: the value is the `Ok`, and an `Err` fails the
            /// computation with [`Error::Task`](crate::Error::Task) naming this task (example in the
            /// [crate docs](crate#errors)).
            #[allow(clippy::too_many_arguments)]
            pub fn try_call(&self, $($arg: impl IntoArg<$A>),+) -> Delayed<T> {
                $(let $arg = $arg.into_arg();)+
                let mut deps = Vec::with_capacity(0 $(+ $arg.dep_count())+);
                $(let $arg = $arg.place(&mut deps);)+
                let f = Arc::clone(&self.f);
                Delayed::from_body(self.name.clone(), deps, move |inputs| {
                    f($($arg.get(inputs)?),+).map_err(Into::into)
                })
            }
        }
    )+};
}

impl<F, R> Signature<(), R> for F where F: Fn() -> R + Send + Sync + 'static {}

impl<F, R> DelayedFn<F, (), R>
where
    F: Fn() -> R + Send + Sync + 'static,
    R: Send + Sync + 'static,
{
    /// A delayed call of a function of no arguments, e.g. one that loads data.
    pub fn call(&self) -> Delayed<R> {
        let f = Arc::clone(&self.f);
        Delayed::from_body(self.name.clone(), Vec::new(), move |_| Ok(f()))
    }
}

impl<F, T, E> DelayedFn<F, (), Result<T, E>>
where
    F: Fn() -> Result<T, E> + Send + Sync + 'static,
    T: Send + Sync + 'static,
    E: Into<TaskError> + 'static,
{
    /// A delayed call of a fallible function of no arguments; see the other `try_call`s.
    pub fn try_call(&self) -> Delayed<T> {
        let f = Arc::clone(&self.f);
        Delayed::from_body(self.name.clone(), Vec::new(), move |_| {
            f().map_err(Into::into)
        })
    }
}

/// Runs a future to completion on the calling thread: the async runtime [`delayed_async`] awaits its
/// tasks on. Implement it for your runtime's handle, e.g. for tokio:
///
/// ```ignore
/// struct Tokio(tokio::runtime::Handle);
///
/// impl belated::BlockOn for Tokio {
///     fn block_on<F: std::future::Future>(&self, future: F) -> F::Output {
///         self.0.block_on(future)
///     }
/// }
/// ```
///
/// [`ParkThread`] needs no runtime, for futures that do not need one (channels, `async` code over
/// blocking calls).
pub trait BlockOn: Send + Sync + 'static {
    /// Polls `future` on this thread until it is ready, and returns its output.
    fn block_on<F: Future>(&self, future: F) -> F::Output;
}

/// A [`BlockOn`] that polls on the calling thread and parks it until the future's waker is called.
/// It drives no I/O or timers: a future that needs a runtime's reactor (tokio's sockets and sleeps)
/// needs that runtime.
#[derive(Clone, Copy, Debug, Default)]
pub struct ParkThread;

impl BlockOn for ParkThread {
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        struct Unpark(std::thread::Thread);

        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark()
            }
        }

        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut context = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
            std::thread::park();
        }
    }
}

/// Async functions of 0 to 6 arguments that [`delayed_async`] accepts, awaited on a [`BlockOn`].
#[diagnostic::on_unimplemented(
    message = "`delayed_async` takes async functions of at most 6 arguments, `Send + Sync + 'static`"
)]
pub trait AsyncSignature<Args, R>: Send + Sync + 'static {
    /// The function that calls this one and awaits the future it returns.
    type Blocking: Signature<Args, R>;

    /// This function, awaited on `runtime`.
    fn awaited_on(self, runtime: impl BlockOn) -> Self::Blocking;
}

/// Makes an async function lazy, like [`delayed`]: each task calls `f` and awaits its future on
/// `runtime`, on the worker thread, so the task's value is the future's output. Tasks are named after
/// `f`.
///
/// ```
/// use belated::{delayed_async, ParkThread};
///
/// async fn double(x: u64) -> u64 {
///     x * 2
/// }
///
/// let double = delayed_async(ParkThread, double);
/// let total = double.call(1) + double.call(2);
/// assert_eq!(total.compute()?, 6);
/// # Ok::<(), belated::Error>(())
/// ```
pub fn delayed_async<F, Args, R>(runtime: impl BlockOn, f: F) -> DelayedFn<F::Blocking, Args, R>
where
    F: AsyncSignature<Args, R>,
{
    DelayedFn {
        name: Name::of::<F>(),
        f: Arc::new(f.awaited_on(runtime)),
        _signature: PhantomData,
    }
}

macro_rules! async_arities {
    ($( ($($arg:ident: $A:ident),*) )+) => {$(
        impl<F, Fut, $($A: 'static),*> AsyncSignature<($($A,)*), Fut::Output> for F
        where
            F: Fn($($A),*) -> Fut + Send + Sync + 'static,
            Fut: Future,
            Fut::Output: 'static,
        {
            type Blocking = Box<dyn Fn($($A),*) -> Fut::Output + Send + Sync>;

            fn awaited_on(self, runtime: impl BlockOn) -> Self::Blocking {
                Box::new(move |$($arg),*| runtime.block_on(self($($arg),*)))
            }
        }
    )+};
}

async_arities! {
    ()
    (a: A)
    (a: A, b: B)
    (a: A, b: B, c: C)
    (a: A, b: B, c: C, d: D)
    (a: A, b: B, c: C, d: D, e: E1)
    (a: A, b: B, c: C, d: D, e: E1, g: G)
}

arities! {
    (a: A)
    (a: A, b: B)
    (a: A, b: B, c: C)
    (a: A, b: B, c: C, d: D)
    (a: A, b: B, c: C, d: D, e: E1)
    (a: A, b: B, c: C, d: D, e: E1, g: G)
}
