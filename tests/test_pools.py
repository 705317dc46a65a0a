"""Thread pools are shared per size but not kept without bound: computing with many num_workers
values leaves a bounded number of OS threads, and a pool let go of ends its threads."""

import sys

import psutil
import pytest

import belated
from belated import delayed

# What belated-core's registry keeps at most: four threads per core, and at least 64.
KEPT_THREADS = max(64, 4 * (psutil.cpu_count() or 1))


def os_threads():
    return psutil.Process().num_threads()


def test_many_pool_sizes_leave_a_bounded_number_of_threads():
    before = os_threads()
    x = delayed(lambda a: a + 1)(1)
    for num_workers in range(1, 61):
        assert belated.compute(x, scheduler="threads", num_workers=num_workers) == (2,)
    # 1,830 worker threads if every size were kept.
    grown = os_threads() - before
    assert grown <= KEPT_THREADS, f"{grown} threads more after computing on 60 pool sizes"
    # The pools kept still serve, and a size let go of starts again.
    for num_workers in (60, 1, 2):
        assert belated.compute(x, scheduler="threads", num_workers=num_workers) == (2,)


@pytest.mark.skipif(sys.platform == "win32", reason="worker processes are started with fork here")
def test_a_processes_pool_let_go_of_ends_its_worker_processes():
    x = delayed(abs)(-3)
    me = psutil.Process()
    assert belated.compute(x, scheduler="processes", num_workers=3) == (3,)
    # Enough other sizes to push the processes pool out of the registry.
    for num_workers in range(1, 6):
        assert belated.compute(x, scheduler="threads", num_workers=num_workers) == (3,)
    children = me.children()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"worker processes still running: {alive}"
