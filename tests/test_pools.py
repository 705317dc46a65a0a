"""Thread pools are shared per size but not kept without bound: computing with many num_workers
values leaves a bounded number of OS threads, and a pool let go of ends its threads (and, for the
processes scheduler, its worker processes)."""

import sys
import time

import psutil
import pytest

import belated
from belated import delayed

# What belated-core's registry keeps at most: four threads per core, and at least 64.
KEPT_THREADS = max(64, 4 * (psutil.cpu_count() or 1))
WAIT = 30


def os_threads():
    return psutil.Process().num_threads()


def settles_at_most(limit, measure):
    """Whether ``measure()`` comes down to ``limit`` within WAIT seconds: pools let go of are not
    waited for, their idle threads end on their own."""
    give_up = time.monotonic() + WAIT
    while measure() > limit and time.monotonic() < give_up:
        time.sleep(0.01)
    return measure() <= limit


def test_many_pool_sizes_leave_a_bounded_number_of_threads():
    before = os_threads()
    x = delayed(lambda a: a + 1)(1)
    for num_workers in range(1, 61):
        assert belated.compute(x, scheduler="threads", num_workers=num_workers) == (2,)
    # 1,830 worker threads if every size were kept.
    assert settles_at_most(before + KEPT_THREADS, os_threads), f"{os_threads() - before} threads more"
    # The pools kept still serve, and a size let go of starts again.
    for num_workers in (60, 1, 2):
        assert belated.compute(x, scheduler="threads", num_workers=num_workers) == (2,)


@pytest.mark.skipif(sys.platform == "win32", reason="worker processes are started with fork here")
def test_a_processes_cluster_let_go_of_ends_its_worker_processes():
    x = delayed(abs)(-3)
    me = psutil.Process()
    before = set(me.children())
    assert belated.compute(x, scheduler="processes", num_workers=3) == (3,)
    workers = set(me.children()) - before
    assert len(workers) == 3
    # Enough other sizes to push the three-worker cluster out of the registry.
    for num_workers in (1, 2, 4, 5):
        assert belated.compute(x, scheduler="processes", num_workers=num_workers) == (3,)
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"worker processes still running: {alive}"
    # A size let go of starts again.
    assert belated.compute(x, scheduler="processes", num_workers=3) == (3,)
