//! Arithmetic on delayed values: `a + b` is a task named `add`, as in dask.
//!
//! Both operands may be delayed (owned or borrowed, any types `T: Add<U>`), or one may be a plain
//! number of a primitive type. A generic "delayed op any value" impl would overlap with the
//! delayed-op-delayed one, so plain operands are listed per primitive; other plain types go through
//! [`Delayed::map`] or [`Delayed::zip`].

use std::ops::{Add, Div, Mul, Neg, Rem, Sub};

use crate::args::IntoArg;
use crate::task::Name;
use crate::{Data, Delayed};

fn binary<T: Data, U: Data, O: Send + Sync + 'static>(
    name: &'static str,
    a: impl IntoArg<T>,
    b: impl IntoArg<U>,
    op: fn(T, U) -> O,
) -> Delayed<O> {
    let (a, b) = (a.into_arg(), b.into_arg());
    let mut deps = Vec::with_capacity(a.dep_count() + b.dep_count());
    let a = a.place(&mut deps);
    let b = b.place(&mut deps);
    Delayed::from_body(Name::Static(name), deps, move |inputs| {
        Ok(op(a.get(inputs)?, b.get(inputs)?))
    })
}

macro_rules! binary_ops {
    ($($Trait:ident $method:ident $name:literal),+) => {$(
        impl<T, U> $Trait<Delayed<U>> for Delayed<T>
        where
            T: Data + $Trait<U>,
            U: Data,
            T::Output: Send + Sync + 'static,
        {
            type Output = Delayed<T::Output>;

            fn $method(self, rhs: Delayed<U>) -> Self::Output {
                binary($name, self, rhs, T::$method)
            }
        }

        impl<T, U> $Trait<&Delayed<U>> for Delayed<T>
        where
            T: Data + $Trait<U>,
            U: Data,
            T::Output: Send + Sync + 'static,
        {
            type Output = Delayed<T::Output>;

            fn $method(self, rhs: &Delayed<U>) -> Self::Output {
                binary($name, self, rhs, T::$method)
            }
        }

        impl<T, U> $Trait<Delayed<U>> for &Delayed<T>
        where
            T: Data + $Trait<U>,
            U: Data,
            T::Output: Send + Sync + 'static,
        {
            type Output = Delayed<T::Output>;

            fn $method(self, rhs: Delayed<U>) -> Self::Output {
                binary($name, self, rhs, T::$method)
            }
        }

        impl<T, U> $Trait<&Delayed<U>> for &Delayed<T>
        where
            T: Data + $Trait<U>,
            U: Data,
            T::Output: Send + Sync + 'static,
        {
            type Output = Delayed<T::Output>;

            fn $method(self, rhs: &Delayed<U>) -> Self::Output {
                binary($name, self, rhs, T::$method)
            }
        }

        scalar_ops!($Trait $method $name:
            i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize f32 f64);
    )+};
}

macro_rules! scalar_ops {
    ($Trait:ident $method:ident $name:literal: $($S:ty)+) => {$(
        impl $Trait<$S> for Delayed<$S> {
            type Output = Delayed<$S>;

            fn $method(self, rhs: $S) -> Self::Output {
                binary($name, self, rhs, <$S as $Trait<$S>>::$method)
            }
        }

        impl $Trait<$S> for &Delayed<$S> {
            type Output = Delayed<$S>;

            fn $method(self, rhs: $S) -> Self::Output {
                binary($name, self, rhs, <$S as $Trait<$S>>::$method)
            }
        }

        impl $Trait<Delayed<$S>> for $S {
            type Output = Delayed<$S>;

            fn $method(self, rhs: Delayed<$S>) -> Self::Output {
                binary($name, self, rhs, <$S as $Trait<$S>>::$method)
            }
        }

        impl $Trait<&Delayed<$S>> for $S {
            type Output = Delayed<$S>;

            fn $method(self, rhs: &Delayed<$S>) -> Self::Output {
                binary($name, self, rhs, <$S as $Trait<$S>>::$method)
            }
        }
    )+};
}

// Names follow Python's operator module, which dask's keys use.
binary_ops! {
    Add add "add",
    Sub sub "sub",
    Mul mul "mul",
    Div div "truediv",
    Rem rem "mod"
}

impl<T> Neg for Delayed<T>
where
    T: Data + Neg,
    T::Output: Send + Sync + 'static,
{
    type Output = Delayed<T::Output>;

    fn neg(self) -> Self::Output {
        (&self).neg()
    }
}

impl<T> Neg for &Delayed<T>
where
    T: Data + Neg,
    T::Output: Send + Sync + 'static,
{
    type Output = Delayed<T::Output>;

    fn neg(self) -> Self::Output {
        let mut deps = Vec::with_capacity(1);
        let a = IntoArg::<T>::into_arg(self).place(&mut deps);
        Delayed::from_body(Name::Static("neg"), deps, move |inputs| {
            Ok(a.get(inputs)?.neg())
        })
    }
}
