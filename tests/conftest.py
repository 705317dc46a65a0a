import pytest

import belated


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
