"""Types of the ``Client`` and its ``Future``: ``client.compute(d)`` of a ``Delayed[T]`` is a
``Future[T]``, ``client.submit(f, ...)`` of a function returning ``R`` a ``Future[R]``."""

from collections.abc import Callable, Iterable
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from belated._belated import Delayed

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R")
P = ParamSpec("P")

class Future(Generic[T_co]):
    """A result being computed on a cluster, from :meth:`Client.compute` or :meth:`Client.submit`."""

    key: Any
    def __init__(self, batch: Any, index: int, token: Any, key: Any) -> None: ...
    def result(self, timeout: float | None = None) -> T_co: ...
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
        collections: Delayed[T],
        *,
        sync: Literal[False] = False,
        traverse: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> Future[T]: ...
    @overload
    def compute(
        self,
        collections: Delayed[T],
        *,
        sync: Literal[True],
        traverse: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> T: ...
    @overload
    def compute(
        self,
        collections: list[Delayed[T]],
        *,
        sync: Literal[False] = False,
        traverse: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> list[Future[T]]: ...
    @overload
    def compute(
        self,
        collections: list[Delayed[T]],
        *,
        sync: Literal[True],
        traverse: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> list[T]: ...
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
        func: Callable[..., R],
        *args: Any,
        pure: bool | None = None,
        key: str | None = None,
        retries: int | None = None,
        **kwargs: Any,
    ) -> Future[R]: ...
    def map(
        self,
        func: Callable[..., R],
        *iterables: Iterable[Any],
        pure: bool | None = None,
        retries: int | None = None,
        **kwargs: Any,
    ) -> list[Future[R]]: ...
    @overload
    def persist(
        self, collections: Delayed[T], *, traverse: bool = True, retries: int | None = None
    ) -> Delayed[T]: ...
    @overload
    def persist(
        self, collections: list[Delayed[T]], *, traverse: bool = True, retries: int | None = None
    ) -> list[Delayed[T]]: ...
    @overload
    def persist(self, collections: Any, *, traverse: bool = True, retries: int | None = None) -> Any: ...
    @overload
    def gather(self, futures: Future[T]) -> T: ...
    @overload
    def gather(self, futures: list[Future[T]]) -> list[T]: ...
    @overload
    def gather(self, futures: Any) -> Any: ...
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
