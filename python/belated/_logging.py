"""belated's loggers, and the hook that carries worker processes' log records to the parent.

belated logs through the standard :mod:`logging` module, under ``"belated"``:

| logger | what it logs |
|---|---|
| `belated` | each `compute` and `persist`: start, and finish or failure with its time (DEBUG) |
| `belated.client` | a future's done callback that raised (ERROR, with its traceback) |
| `belated.cluster` | a local `Client`'s cluster starting and closing (DEBUG) |
| `belated.worker` | worker processes: what a worker runtime reports through the hook below |
| `belated.dashboard` | the dashboard starting and stopping, its address without the token (DEBUG) |

Nothing is printed unless you configure logging, for example
``logging.basicConfig(level=logging.DEBUG)`` or ``logging.getLogger("belated").setLevel("DEBUG")``
with a handler.

Records that tasks (or belated) log inside a worker process belong in the parent process, handled
there by the logger of the same name, with a ``worker`` attribute naming the worker
(``"worker-<pid>"``). A worker runtime forwards them with three functions: the parent sends
``worker_levels()`` to its workers; a worker calls ``forward_records(send, levels)``, where ``send``
carries one plain payload (a dict of ``str``, ``int``, ``float``, ``bool`` and ``None``) to the parent
and may be called from any thread; the parent passes each payload to ``receive_record(payload,
worker)``. belated's own workers (``scheduler="processes"`` and a local ``Client``) receive the
levels with the first call of each computation and send their records with each task's reply (see
``belated._worker``): a task's records are handled before its result is returned, and those logged
between tasks come with the next reply.
"""

import logging
import time

logger = logging.getLogger("belated")
client_logger = logging.getLogger("belated.client")
cluster_logger = logging.getLogger("belated.cluster")
dashboard_logger = logging.getLogger("belated.dashboard")

# A library leaves output to the application: without this, Python's last-resort handler would print
# our warnings to stderr when the application configured no logging.
logger.addHandler(logging.NullHandler())


class computing:
    """Logs the start of ``what`` on ``scheduler``, then its finish or failure, with its duration.

    A class, not a ``contextlib.contextmanager``: that one sets the ``__traceback__`` of an exception
    passing through it, which for a task's exception whose ``__setattr__`` refuses it raised an
    ``AttributeError`` in place of the task's own exception."""

    def __init__(self, what: str, scheduler):
        self.what = what
        self.start = None
        if logger.isEnabledFor(logging.DEBUG):
            where = scheduler if isinstance(scheduler, str) else type(scheduler).__name__
            logger.debug("%s started on %s", what, where)
            self.start = time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if self.start is None:
            return False
        took = time.perf_counter() - self.start
        if kind is None:
            logger.debug("%s finished in %.3f s", self.what, took)
        else:
            logger.debug("%s failed after %.3f s: %s", self.what, took, kind.__name__)
        return False


# -- worker processes ---------------------------------------------------------------------------------

_PLAIN = (str, int, float, bool, type(None))


def worker_levels() -> dict:
    """The levels the parent has set: for the root logger (``""``) and every logger given its own."""
    levels = {"": logging.getLogger().level}
    for name, item in logging.Logger.manager.loggerDict.items():
        if isinstance(item, logging.Logger) and item.level != logging.NOTSET:
            levels[name] = item.level
    return levels


class _Forwarder(logging.Handler):
    def __init__(self, send):
        super().__init__()
        self._send = send

    def emit(self, record):
        try:
            self._send(_payload(record))
        except Exception:
            self.handleError(record)


def _payload(record: logging.LogRecord) -> dict:
    """``record`` as plain values: the message formatted, the exception as text, extras as reprs."""
    payload = {
        key: value if isinstance(value, _PLAIN) else repr(value)
        for key, value in record.__dict__.items()
        if key not in ("args", "exc_info", "msg", "message")
    }
    payload["msg"] = record.getMessage()
    if record.exc_info and not record.exc_text:
        payload["exc_text"] = logging.Formatter().formatException(record.exc_info)
    return payload


def forward_records(send, levels: dict) -> None:
    """In a worker process: sends every record at or above the parent's ``levels`` through ``send``."""
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_Forwarder(send))


def receive_record(payload: dict, worker: str) -> None:
    """In the parent: handles a forwarded record as if it had been logged here, if its logger wants it."""
    record = logging.makeLogRecord(payload)
    record.worker = worker
    target = logging.getLogger(record.name)
    if target.isEnabledFor(record.levelno):
        target.handle(record)
