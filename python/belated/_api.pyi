"""Types of ``compute`` and ``persist``: a tuple with one result per argument, each ``Delayed[T]``
giving a ``T``. Other arguments (containers of ``Delayed`` values, plain values) give ``Any``."""

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar, overload

from belated._belated import Delayed

T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
T4 = TypeVar("T4")
T5 = TypeVar("T5")

@overload
def compute(
    a: Delayed[T1],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[T1]: ...
@overload
def compute(
    a: Delayed[T1],
    b: Delayed[T2],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[T1, T2]: ...
@overload
def compute(
    a: Delayed[T1],
    b: Delayed[T2],
    c: Delayed[T3],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[T1, T2, T3]: ...
@overload
def compute(
    a: Delayed[T1],
    b: Delayed[T2],
    c: Delayed[T3],
    d: Delayed[T4],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[T1, T2, T3, T4]: ...
@overload
def compute(
    a: Delayed[T1],
    b: Delayed[T2],
    c: Delayed[T3],
    d: Delayed[T4],
    e: Delayed[T5],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[T1, T2, T3, T4, T5]: ...
@overload
def compute(
    *args: Any,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[Any, ...]: ...
@overload
def persist(
    a: Delayed[T1],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[Delayed[T1]]: ...
@overload
def persist(
    a: Delayed[T1],
    b: Delayed[T2],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[Delayed[T1], Delayed[T2]]: ...
@overload
def persist(
    *args: Any,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[Any, ...]: ...
def is_dask_collection(x: object) -> bool: ...
def optimize(*args: Any, traverse: bool = True, **kwargs: Any) -> tuple[Any, ...]: ...
@contextlib.contextmanager
def annotate(**annotations: Any) -> Iterator[None]: ...

class Dashboard:
    """The live dashboard started by :func:`dashboard`; Jupyter shows it as a link."""

    url: str
    def __init__(self, url: str) -> None: ...
    def stop(self) -> None: ...
    def __enter__(self) -> Dashboard: ...
    def __exit__(self, *exc: object) -> None: ...

def dashboard(
    host: str = "127.0.0.1", port: int = 8787, token: str | None = None, *, quiet: bool = False
) -> Dashboard: ...
