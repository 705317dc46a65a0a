"""belated: dask.delayed's programming model on an engine written in Rust.

Wrap functions with :func:`delayed`, call them to build a task graph lazily, and :func:`compute` the
graph in parallel::

    >>> from belated import delayed, compute
    >>> @delayed
    ... def square(x):
    ...     return x * x
    >>> total = square(3) + square(4)
    >>> total.compute()
    25
    >>> compute([square(i) for i in range(4)])
    ([0, 1, 4, 9],)

``import belated as dask`` runs dask.delayed code unchanged; with dask installed, dask's other
submodules (``belated.array``, ``belated.dataframe``, ``belated.utils``...) are dask's own.
"""

import importlib
import pkgutil

from belated import _submodules, config, diagnostics, graph_manipulation
from belated._api import Dashboard, annotate, compute, dashboard, is_dask_collection, optimize, persist
from belated._belated import (
    BelatedError,
    CancelledError,
    ComputeTimeoutError,
    Delayed,
    InternalError,
    RemoteError,
    WorkerLostError,
    WorkerStartError,
    delayed,
)
from belated._belated import __version__ as __version__  # the wheel's version, as Cargo's
from belated._client import Client, Future  # its stub types Future generically (Future[T])
from belated._futures import (
    as_completed,
    default_client,
    fire_and_forget,
    futures_of,
    get_client,
    rejoin,
    secede,
    wait,
    worker_client,
)
from belated._get import get
from belated._progress import progress
from belated._tokenize import TokenizationError, tokenize
from belated._visualize import Picture, visualize

__all__ = [
    "BelatedError",
    "CancelledError",
    "Client",
    "ComputeTimeoutError",
    "Dashboard",
    "Delayed",
    "Future",
    "InternalError",
    "Picture",
    "RemoteError",
    "TokenizationError",
    "WorkerLostError",
    "WorkerStartError",
    "annotate",
    "as_completed",
    "compute",
    "config",
    "dashboard",
    "default_client",
    "delayed",
    "diagnostics",
    "fire_and_forget",
    "futures_of",
    "get",
    "get_client",
    "graph_manipulation",
    "is_dask_collection",
    "optimize",
    "persist",
    "progress",
    "rejoin",
    "secede",
    "tokenize",
    "visualize",
    "wait",
    "worker_client",
]

# dask's submodules, reached as ``belated.<name>`` when dask is installed; without it, these names say
# how to install it.
_DASK_SUBMODULES = frozenset({
    "array", "bag", "base", "blockwise", "bytes", "callbacks", "context", "core", "dataframe",
    "datasets", "distributed", "dot", "highlevelgraph", "layers", "local", "multiprocessing",
    "optimization", "order", "sizeof", "system", "threaded", "typing", "utils",
})  # fmt: skip

_OWN_SUBMODULES = frozenset(module.name for module in pkgutil.iter_modules(__path__))

_submodules.install(
    own=_OWN_SUBMODULES,
    dask_submodules=_DASK_SUBMODULES,
    overlays={
        "delayed": {"delayed": delayed, "Delayed": Delayed},
        "tokenize": {"tokenize": tokenize, "TokenizationError": TokenizationError},
    },
)


def __getattr__(name):
    # ``from belated import _worker`` asks for the attribute before importing the submodule: looking
    # in dask for it first would import all of dask (50 ms) on the way to belated's own file.
    if name.startswith("__") or name in _OWN_SUBMODULES:
        raise AttributeError(f"module 'belated' has no attribute {name!r}")
    if name.startswith("_"):
        # dask's private submodules (``dask._task_spec``, ``dask._expr``), which code written for dask
        # reaches as attributes too; nothing else private is forwarded.
        try:
            return importlib.import_module(f"dask.{name}")
        except ImportError:
            raise AttributeError(f"module 'belated' has no attribute {name!r}") from None
    try:
        import dask
    except ImportError:
        if name in _DASK_SUBMODULES:
            raise ImportError(
                f"belated.{name} is dask.{name}, and dask is not installed: pip install 'belated[dask]'"
            ) from None
        raise AttributeError(f"module 'belated' has no attribute {name!r}") from None
    try:
        return importlib.import_module(f"dask.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"dask.{name}":
            raise  # the submodule exists but needs something missing (pandas for dask.dataframe...)
    try:
        return getattr(dask, name)
    except AttributeError:
        raise AttributeError(f"module 'belated' has no attribute {name!r}") from None
