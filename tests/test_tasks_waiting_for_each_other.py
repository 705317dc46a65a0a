"""Tasks that wait for each other all run together in the end, on the threads scheduler, as on dask's
thread pool: with ``num_workers=N``, any N ready tasks that block on each other (a barrier, a queue, an
event) are started, whatever ran before. Before each such group runs a phase of many builtin-function
tasks, after which the threads scheduler may have measured that one thread runs them best; each wait
has a timeout, so a regression fails rather than hangs."""

import operator
import os
import queue
import threading

import pytest

import belated
from belated import compute, delayed

# Long enough for any machine to start the other tasks; a task still waiting then has failed.
PATIENCE = 10
# Groups of waiting tasks, one after another, each after its own phase of short tasks: whether that
# phase settles on one thread depends on the machine's load, so the rounds make a regression likely
# to show.
ROUNDS = 3


def settling_phase(after, leaves=100_000):
    """A tree of builtin-function tasks summing ``after - i``, run once ``after`` is computed: short
    tasks all the way to the root, so no slow task comes at the end to let every thread run again."""
    level = [delayed(operator.sub)(after, i) for i in range(leaves)]
    while len(level) > 1:
        level = [
            delayed(operator.add)(*level[i : i + 2]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)
        ]
    return level[0]


def in_rounds(group):
    """``ROUNDS`` groups of tasks, each made by ``group(settled)`` once a phase of short tasks after
    the previous group has run; the results of every group, in order."""
    groups, after = [], 0
    for _ in range(ROUNDS):
        tasks = group(settling_phase(after))
        groups.append(tasks)
        after = delayed(len)(tasks)
    return groups


def meeting(parties):
    """A task of ``parties`` that each return their index once all of them wait together."""
    barrier = threading.Barrier(parties, timeout=PATIENCE)

    def meet(_, i):
        barrier.wait()
        return i

    return meet


def default_threads():
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("the default threads scheduler has one thread here")
    return cores


@pytest.mark.parametrize("workers", [None, 2, 4])
def test_tasks_meeting_at_a_barrier_after_many_short_ones_all_run(workers):
    parties = workers or 2
    if workers is None:
        default_threads()

    def group(settled):
        meet = meeting(parties)
        return [delayed(meet)(settled, i, pure=False) for i in range(parties)]

    assert compute(in_rounds(group), num_workers=workers) == ([list(range(parties))] * ROUNDS,)


def test_a_consumer_and_a_producer_handing_over_through_queues_both_run():
    """Each task puts for the other, then gets what the other put: whichever starts first waits."""
    default_threads()

    def group(settled):
        to_b, to_a = queue.Queue(), queue.Queue()

        def a(_):
            to_b.put("ping")
            return to_a.get(timeout=PATIENCE)

        def b(_):
            to_a.put("pong")
            return to_b.get(timeout=PATIENCE)

        return [delayed(a)(settled), delayed(b)(settled)]

    assert compute(in_rounds(group)) == ([["pong", "ping"]] * ROUNDS,)


def test_tasks_setting_events_the_other_waits_for_both_run():
    def signal_and_wait(_, mine, theirs):
        mine.set()
        return theirs.wait(timeout=PATIENCE)

    def group(settled):
        a_ran, b_ran = threading.Event(), threading.Event()
        return [
            delayed(signal_and_wait)(settled, a_ran, b_ran, pure=False),
            delayed(signal_and_wait)(settled, b_ran, a_ran, pure=False),
        ]

    assert compute(in_rounds(group), num_workers=2) == ([[True, True]] * ROUNDS,)


def tree_graph(leaves=20_000):
    """A dask graph summing ``abs(-i)`` as a tree of builtin-function tasks; the root's key."""
    dsk = {("x", i): (abs, -i) for i in range(leaves)}
    level = list(dsk)
    while len(level) > 1:
        pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
        level = []
        for pair in pairs:
            if len(pair) == 1:
                level.append(pair[0])
                continue
            key = ("sum", len(dsk))
            dsk[key] = (operator.add, *pair)
            level.append(key)
    return dsk, level[0]


@pytest.mark.parametrize("workers", [2, 4])
def test_a_dask_graphs_tasks_meeting_at_a_barrier_all_run(workers):
    meet = meeting(workers)
    dsk, root = tree_graph()
    keys = [("meet", i) for i in range(workers)]
    dsk.update({key: (meet, root, i) for i, key in enumerate(keys)})
    assert belated.get(dsk, keys, num_workers=workers) == tuple(range(workers))


def test_a_dask_arrays_blocks_meeting_at_a_barrier_all_run():
    da = pytest.importorskip("dask.array")
    np = pytest.importorskip("numpy")
    meet = meeting(2)

    def meet_in_block(block, settled, block_id=None):
        return block + meet(settled, block_id[0])

    # One-element chunks: many short tasks, as the tree of builtins above.
    settled = da.ones(4_000, chunks=1).sum()
    blocks = da.zeros(2, chunks=1).map_blocks(meet_in_block, settled, meta=np.array((), dtype=float))
    (met,) = compute(blocks, num_workers=2)
    assert met.tolist() == [0, 1]
