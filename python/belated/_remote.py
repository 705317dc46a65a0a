"""Tasks that launch tasks from a worker process of a ``Client(processes=True)``.

``get_client()`` in such a task is a :class:`WorkerClient`: each of its calls travels to the parent
on the task's own connection (``_worker.ask_parent``), where :class:`Answers` runs it on the Client
and sends the answer back. Futures travel as :class:`RemoteFuture` (their key); the parent holds the
futures it sent a task until that task ends.

A task waiting on work it submitted holds its worker thread, so that work must not queue behind it:
the parent runs work submitted from tasks off the cluster, on a thread of its own (as the Client does
for tasks of ``processes=False``), which is what ``secede()`` achieves in distributed. A full pool,
``Client(n_workers=1, threads_per_worker=1)`` included, so never deadlocks on it.
"""

import concurrent.futures
import threading
import weakref

from belated import _belated, _worker
from belated._futures import AnyFuture, futures_in, replace_futures, task_client


class WorkerClient:
    """The Client, seen from a task in one of its worker processes: the Client's methods, each run
    by the Client in the parent process; futures come back as :class:`RemoteFuture`."""

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args, **kwargs):
            return _ask(("client", name, args, kwargs))

        method.__name__ = name
        return method

    def __repr__(self):
        return "<belated.WorkerClient: the Client of this worker process, in its parent>"


class RemoteFuture(AnyFuture):
    """A future of the parent's Client, in a task of a worker process: ``result`` and the rest ask
    the parent. It can be passed to the client's calls, as an argument of a task or to ``gather``."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key

    def _ask(self, name, *args):
        return _ask(("future", self.key, name, args))

    def result(self, timeout=None):
        return self._ask("result", timeout)

    def exception(self, timeout=None):
        return self._ask("exception", timeout)

    def done(self):
        return self._ask("done")

    def cancel(self, reason=None, msg=None):
        return self._ask("cancel", reason, msg)

    def cancelled(self):
        return self._ask("cancelled")

    @property
    def status(self):
        return self._ask("status")

    def _as_delayed(self):
        return _belated.delayed(self.result(), name=self.key, traverse=False)

    def __repr__(self):
        return f"<RemoteFuture: key: {self.key}>"


def wait(futures, timeout, return_when):
    """``belated.wait`` of the futures a task holds: waited for in the parent, by key."""
    done = set(_ask(("wait", sorted({future.key for future in futures}), timeout, return_when)))
    given = set(futures)
    finished = {future for future in given if future.key in done}
    return concurrent.futures._base.DoneAndNotDoneFutures(finished, given - finished)


def _ask(request):
    answer = _worker.ask_parent(request)
    _worker.task_channel.held.extend(future.key for future in futures_in(answer, RemoteFuture))
    return answer


def _held_future(futures, key):
    held = futures.get(key)
    if held is None:
        from belated import CancelledError

        raise CancelledError(f"future {key} was let go of: the task it was sent to has ended")
    return held[0]


def worker_client():
    """``get_client()`` in a task of a worker process."""
    if not _worker.answered_by_client:
        raise ValueError(
            "get_client() was called in a task running in a belated worker process without a Client "
            "(scheduler='processes' has none): start a belated.Client() and submit the task to it to "
            "submit tasks from tasks"
        )
    if getattr(_worker.task_channel, "channel", None) is None:
        raise ValueError("get_client() in a worker process works on the task's own thread only")
    return WorkerClient()


_BLOCKING = {"result": "_result", "exception": "_exception"}


class Answers:
    """Answers the requests of the tasks of ``client``'s workers (see the module's text). Called on the
    thread waiting for the asking task's reply, with the request's frames; returns the answer's."""

    def __init__(self, client):
        # Weak: the cluster holding this must not keep its Client alive.
        self._client = weakref.ref(client)
        self._lock = threading.Lock()
        # key -> [future, how many times it was sent to a task still running]
        self._futures = {}

    def __call__(self, frames):
        try:
            answer = (True, self._answer(_worker.loads(frames)))
        except BaseException as error:
            answer = (False, error)
        try:
            return _worker.dumps(answer)
        except Exception as error:
            what = "exception" if not answer[0] else "answer"
            text = f"{type(answer[1]).__name__}: {answer[1]}" if not answer[0] else type(answer[1]).__name__
            return _worker.dumps(
                (False, TypeError(f"the parent's {what} ({text}) cannot be pickled: {error}"))
            )

    def _answer(self, request):
        kind = request[0]
        if kind == "release":
            with self._lock:
                for key in request[1]:
                    held = self._futures.get(key)
                    if held is not None:
                        held[1] -= 1
                        if held[1] <= 0:
                            del self._futures[key]
            return None
        client = self._client()
        if client is None or client._closed:
            from belated import CancelledError

            raise CancelledError("the Client was closed")
        with self._lock:
            request = replace_futures(
                request, lambda future: _held_future(self._futures, future.key), RemoteFuture
            )
        if kind == "wait":
            from belated._futures import _wait

            _, keys, timeout, return_when = request
            with self._lock:
                futures = [_held_future(self._futures, key) for key in keys]
            done, _ = _wait(futures, timeout, return_when)
            return [future.key for future in done]
        if kind == "future":
            _, key, name, args = request
            with self._lock:
                future = _held_future(self._futures, key)
            # The waiting ones as they block, never an asynchronous client's awaitables: the task's
            # thread waits for the answer.
            attribute = getattr(future, _BLOCKING.get(name, name))
            return self._sent(attribute(*args) if callable(attribute) else attribute)
        _, name, args, kwargs = request
        if name.startswith("_"):
            raise AttributeError(f"Client has no public method {name!r}")
        previous = getattr(task_client, "client", None)
        # Work submitted here is a task's: the Client runs it off the cluster (see the module's text),
        # and what it submits in turn as well.
        task_client.client = client
        try:
            return self._sent(getattr(client, name)(*args, **kwargs))
        finally:
            task_client.client = previous

    def _sent(self, value):
        def send(future):
            with self._lock:
                self._futures.setdefault(future.key, [future, 0])[1] += 1
            return RemoteFuture(future.key)

        return replace_futures(value, send)
