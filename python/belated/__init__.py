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

``import belated as dask`` runs dask.delayed code unchanged.
"""

from importlib.metadata import PackageNotFoundError, version

from belated import config, diagnostics
from belated._api import Dashboard, compute, dashboard, persist
from belated._belated import (
    BelatedError,
    CancelledError,
    ComputeTimeoutError,
    Delayed,
    InternalError,
    WorkerLostError,
    WorkerStartError,
    delayed,
)
from belated._client import Client, Future
from belated._get import get
from belated._visualize import Picture, visualize

try:
    __version__ = version("belated")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

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
    "WorkerLostError",
    "WorkerStartError",
    "compute",
    "config",
    "dashboard",
    "delayed",
    "diagnostics",
    "get",
    "persist",
    "visualize",
]
