import signal
import threading

import pytest

import belated


@pytest.fixture(scope="session", autouse=True)
def interruptible():
    """Ctrl-C raises KeyboardInterrupt in the tests, as in a user's interpreter, also when the run was
    started with SIGINT ignored (in the background of a non-interactive shell, say), which Python then
    keeps ignoring."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(params=["threads", "sync"])
def scheduler(request):
    """Runs a test once per local scheduler, set the way users set it."""
    with belated.config.set(scheduler=request.param):
        yield request.param


@pytest.fixture(scope="session")
def local_cluster():
    """One local cluster (2 workers of 2 threads) for the tests that only need one to run on."""
    with belated.Client(
        n_workers=2, threads_per_worker=2, memory_limit=None, dashboard_address=None, set_as_default=False
    ) as client:
        yield client


@pytest.fixture(scope="module")
def in_process():
    """A Client running tasks on threads of this process."""
    with belated.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None, set_as_default=False
    ) as client:
        yield client


@pytest.fixture(scope="module")
def reference():
    """A real distributed cluster in this process, to compare with."""
    distributed = pytest.importorskip("distributed")
    # The default client while open: distributed's wait and as_completed need one.
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None
    ) as client:
        yield client


@pytest.fixture(params=["belated-threads", "belated-processes", "distributed"])
def any_client(request, in_process, local_cluster):
    """The same test on belated's two kinds of Client and on distributed's."""
    if request.param == "distributed":
        return request.getfixturevalue("reference")
    return in_process if request.param == "belated-threads" else local_cluster
