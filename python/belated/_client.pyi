"""Types of the ``Client`` and its ``Future``: ``client.compute(d)`` of a ``Delayed[_T]`` is a
``Future[_T]``, ``client.submit(f, ...)`` of a function returning ``_R`` a ``Future[_R]``."""

from collections.abc import Callable, Generator, Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, Literal, ParamSpec, TypeVar, overload

from belated._belated import Delayed

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)
_R = TypeVar("_R")
_P = ParamSpec("_P")

class Future(Generic[_T_co]):
    """A result being computed on a cluster, from :meth:`Client.compute`, :meth:`Client.submit`,
    :meth:`Client.map` or :meth:`Client.scatter`."""

    key: str | tuple[Any, ...]
    client: Client
    def __init__(self, computation: Any, index: int, key: Any, client: Client) -> None: ...
    def result(self, timeout: float | None = None) -> _T_co: ...
    def done(self) -> bool: ...
    def exception(self, timeout: float | None = None) -> BaseException | None: ...
    def traceback(self, timeout: float | None = None) -> TracebackType | None: ...
    def cancel(self, reason: str | None = None, msg: str | None = None) -> None: ...
    def release(self) -> None: ...
    def retry(self) -> Any: ...
    @property
    def type(self) -> type | None: ...
    def cancelled(self) -> bool: ...
    def add_done_callback(self, fn: Callable[[Future[_T_co]], object]) -> None: ...
    @property
    def status(self) -> Literal["pending", "cancelled", "error", "finished"]: ...
    def __await__(self) -> Generator[Any, None, _T_co]: ...
    def __dask_tokenize__(self) -> tuple[str, str | tuple[Any, ...]]: ...

class Client:
    """Runs computations on a cluster while it is open, as in the dask tutorial."""

    def __init__(
        self,
        address: Any = None,
        *,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        processes: bool = True,
        memory_limit: int | float | str | None = "auto",
        silence_logs: int | str | bool | None = None,
        dashboard_address: str | None = ":8787",
        asynchronous: bool = False,
        name: str | None = None,
        set_as_default: bool = True,
        preload: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None: ...
    @property
    def dashboard_link(self) -> str | None: ...
    @property
    def status(self) -> str: ...
    @property
    def cluster(self) -> LocalCluster: ...
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
        pure: bool = True,
        key: str | tuple[Any, ...] | None = None,
        retries: int | None = None,
        workers: Any = None,
        resources: dict[str, float] | None = None,
        priority: int = 0,
        fifo_timeout: str | float = "100 ms",
        allow_other_workers: bool = False,
        actor: bool = False,
        actors: bool = False,
        **kwargs: Any,
    ) -> Future[_R]: ...
    def map(
        self,
        func: Callable[..., _R],
        *iterables: Iterable[Any],
        key: str | list[Any] | None = None,
        pure: bool = True,
        retries: int | None = None,
        workers: Any = None,
        resources: dict[str, float] | None = None,
        priority: int = 0,
        fifo_timeout: str | float = "100 ms",
        allow_other_workers: bool = False,
        actor: bool = False,
        actors: bool = False,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> list[Future[_R]]: ...
    @overload
    def persist(
        self, collections: Delayed[_T], *, traverse: bool = True, retries: int | None = None, **kwargs: Any
    ) -> Delayed[_T]: ...
    @overload
    def persist(
        self,
        collections: list[Delayed[_T]],
        *,
        traverse: bool = True,
        retries: int | None = None,
        **kwargs: Any,
    ) -> list[Delayed[_T]]: ...
    @overload
    def persist(
        self, collections: Any, *, traverse: bool = True, retries: int | None = None, **kwargs: Any
    ) -> Any: ...
    @classmethod
    def current(cls, allow_global: bool = True) -> Client: ...
    def cancel(
        self,
        futures: Any,
        asynchronous: bool | None = None,
        force: bool = False,
        reason: str | None = None,
        msg: str | None = None,
    ) -> Any: ...
    def retry(self, futures: Any, asynchronous: bool | None = None) -> Any: ...
    def nbytes(self, keys: Any = None, summary: bool = True, **kwargs: Any) -> dict[Any, int]: ...
    @overload
    def gather(self, futures: Future[_T], errors: str = ..., direct: bool | None = ...) -> _T: ...
    @overload
    def gather(self, futures: list[Future[_T]], errors: str = ..., direct: bool | None = ...) -> list[_T]: ...
    @overload
    def gather(
        self, futures: Iterator[Future[_T]], errors: str = ..., direct: bool | None = ...
    ) -> Iterator[_T]: ...
    @overload
    def gather(self, futures: Any, errors: str = ..., direct: bool | None = ...) -> Any: ...
    def scatter(
        self,
        data: Any,
        *,
        broadcast: bool = False,
        hash: bool = True,
        direct: bool | None = None,
        **kwargs: Any,
    ) -> Any: ...
    def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any: ...
    def cluster_stats(self) -> dict[str, int]: ...
    def who_has(self, futures: Any = None) -> dict[Any, list[str]]: ...
    def has_what(self, workers: list[str] | None = None) -> dict[str, list[Any]]: ...
    def nthreads(self) -> dict[str, int]: ...
    def scheduler_info(self) -> dict[str, Any]: ...
    def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> None: ...
    def run(self, function: Callable[..., _R], *args: Any, **kwargs: Any) -> dict[str, _R]: ...
    def upload_file(self, filename: str, load: bool = True) -> dict[str, Any]: ...
    def restart(self) -> None: ...
    def scale(self, n: int) -> None: ...
    @property
    def worker_pids(self) -> list[int]: ...
    def close(self) -> None: ...
    def __enter__(self) -> Client: ...
    def __exit__(self, *exc: object) -> None: ...
    def __await__(self) -> Generator[Any, None, Client]: ...
    async def __aenter__(self) -> Client: ...
    async def __aexit__(self, *exc: object) -> None: ...
    # The attributes of the Dask distributed client it is connected to, if it is.
    def __getattr__(self, name: str) -> Any: ...

def parse_memory_limit(limit: int | float | str | None, n_workers: int) -> int | None: ...
def describe_memory_limit(limit: int | float | str | None, per_worker: int | None) -> str | None: ...

class OnClient:
    """A function that runs as a task of ``client`` in this process."""

    __name__: str
    func: Callable[..., Any]
    client: Client
    def __init__(self, func: Callable[..., Any], client: Client) -> None: ...
    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...
    def __dask_tokenize__(self) -> Any: ...

class LocalCluster:
    """``client.cluster`` of a local cluster: its workers, and ``scale``/``adapt``."""

    def __init__(self, client: Client) -> None: ...
    @property
    def name(self) -> str | None: ...
    @property
    def dashboard_link(self) -> str | None: ...
    @property
    def workers(self) -> dict[int, dict[str, Any]]: ...
    def scale(self, n: int | None = None, *, cores: int | None = None, memory: Any = None) -> None: ...
    def adapt(
        self,
        minimum: int = 1,
        maximum: int | None = None,
        interval: float | str = "1s",
        wait_count: int = 3,
        **kwargs: Any,
    ) -> Adaptive: ...
    def close(self) -> None: ...

class Adaptive:
    """Scales a local cluster with its work until ``stop()``."""

    def __init__(
        self, cluster: LocalCluster, minimum: int, maximum: int, interval: float, wait_count: int
    ) -> None: ...
    def target(self) -> int: ...
    def recommendation(self) -> int | None: ...
    def step(self) -> bool: ...
    def stop(self) -> None: ...

def current_client() -> Client | None: ...
