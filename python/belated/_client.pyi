"""Types of the ``Client`` and its ``Future``: ``client.compute(d)`` of a ``Delayed[_T]`` is a
``Future[_T]``, ``client.submit(f, ...)`` of a function returning ``_R`` a ``Future[_R]``."""

from collections.abc import Callable, Iterable
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from belated._belated import Delayed

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)
_R = TypeVar("_R")
_P = ParamSpec("_P")

class Future(Generic[_T_co]):
    """A result being computed on a cluster, from :meth:`Client.compute` or :meth:`Client.submit`."""

    key: Any
    def __init__(self, batch: Any, index: int, token: Any, key: Any) -> None: ...
    def result(self, timeout: float | None = None) -> _T_co: ...
    def done(self) -> bool: ...
    def exception(self, timeout: float | None = None) -> BaseException | None: ...
    def cancel(self) -> None: ...
    def cancelled(self) -> bool: ...
    @property
    def status(self) -> Literal["pending", "cancelled", "error", "finished"]: ...

class Client:
    """Runs computations on a cluster while it is open, as in the dask tutorial."""

    def __init__(
        self,
        address: Any = None,
        *,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        memory_limit: int | float | str | None = "auto",
        dashboard_address: str | None = ":8787",
        set_as_default: bool = True,
        preload: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None: ...
    @property
    def dashboard_link(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @overload
    def compute(
        self,
        collections: Delayed[_T],
        *,
        sync: Literal[False] = False,
        traverse: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> Future[_T]: ...
    @overload
    def compute(
        self,
        collections: Delayed[_T],
        *,
        sync: Literal[True],
        traverse: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> _T: ...
    @overload
    def compute(
        self,
        collections: list[Delayed[_T]],
        *,
        sync: Literal[False] = False,
        traverse: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> list[Future[_T]]: ...
    @overload
    def compute(
        self,
        collections: list[Delayed[_T]],
        *,
        sync: Literal[True],
        traverse: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> list[_T]: ...
    @overload
    def compute(
        self,
        collections: Any,
        *,
        sync: bool = False,
        traverse: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> Any: ...
    def submit(
        self,
        func: Callable[..., _R],
        *args: Any,
        pure: bool | None = None,
        key: str | None = None,
        retries: int | None = None,
        **kwargs: Any,
    ) -> Future[_R]: ...
    def map(
        self,
        func: Callable[..., _R],
        *iterables: Iterable[Any],
        pure: bool | None = None,
        retries: int | None = None,
        **kwargs: Any,
    ) -> list[Future[_R]]: ...
    @overload
    def persist(
        self, collections: Delayed[_T], *, traverse: bool = True, retries: int | None = None
    ) -> Delayed[_T]: ...
    @overload
    def persist(
        self, collections: list[Delayed[_T]], *, traverse: bool = True, retries: int | None = None
    ) -> list[Delayed[_T]]: ...
    @overload
    def persist(self, collections: Any, *, traverse: bool = True, retries: int | None = None) -> Any: ...
    @overload
    def gather(self, futures: Future[_T], errors: str = ...) -> _T: ...
    @overload
    def gather(self, futures: list[Future[_T]], errors: str = ...) -> list[_T]: ...
    @overload
    def gather(self, futures: Any, errors: str = ...) -> Any: ...
    def cluster_stats(self) -> dict[str, int]: ...
    @property
    def worker_pids(self) -> list[int]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Client: ...
    def __exit__(self, *exc: object) -> None: ...
    # The attributes of the Dask distributed client it is connected to, if it is.
    def __getattr__(self, name: str) -> Any: ...

def parse_memory_limit(limit: int | float | str | None, n_workers: int) -> int | None: ...
def describe_memory_limit(limit: int | float | str | None, per_worker: int | None) -> str | None: ...
