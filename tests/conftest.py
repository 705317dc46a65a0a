import pytest

import belated


@pytest.fixture(params=["threads", "sync"])
def scheduler(request):
    """Runs a test once per local scheduler, set the way users set it."""
    with belated.config.set(scheduler=request.param):
        yield request.param
