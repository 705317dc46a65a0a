"""Types of ``compute`` and ``persist``: a tuple with one result per argument, each ``Delayed[_T]``
giving a ``_T``. Other arguments (containers of ``Delayed`` values, plain values) give ``Any``."""

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar, overload

from belated._belated import Delayed

_T1 = TypeVar("_T1")
_T2 = TypeVar("_T2")
_T3 = TypeVar("_T3")
_T4 = TypeVar("_T4")
_T5 = TypeVar("_T5")

@overload
def compute(
    a: Delayed[_T1],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[_T1]: ...
@overload
def compute(
    a: Delayed[_T1],
    b: Delayed[_T2],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[_T1, _T2]: ...
@overload
def compute(
    a: Delayed[_T1],
    b: Delayed[_T2],
    c: Delayed[_T3],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[_T1, _T2, _T3]: ...
@overload
def compute(
    a: Delayed[_T1],
    b: Delayed[_T2],
    c: Delayed[_T3],
    d: Delayed[_T4],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[_T1, _T2, _T3, _T4]: ...
@overload
def compute(
    a: Delayed[_T1],
    b: Delayed[_T2],
    c: Delayed[_T3],
    d: Delayed[_T4],
    e: Delayed[_T5],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[_T1, _T2, _T3, _T4, _T5]: ...
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
    a: Delayed[_T1],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[Delayed[_T1]]: ...
@overload
def persist(
    a: Delayed[_T1],
    b: Delayed[_T2],
    /,
    *,
    traverse: bool = True,
    optimize_graph: bool = True,
    scheduler: Any = None,
    num_workers: int | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    **kwargs: Any,
) -> tuple[Delayed[_T1], Delayed[_T2]]: ...
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
