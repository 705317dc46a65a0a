"""More hostile but ordinary tasks, on every scheduler, each compared with dask and eager Python where
they can answer: callables whose state hides where a token might not look, and tasks that misuse the
process they run in."""

import concurrent.futures
import logging
import subprocess
import sys
import textwrap
import time

import dask
import pytest
from worker_tasks import (
    ClaimsASize,
    RebuildExits,
    RebuildInterrupts,
    RefusesAttributes,
    claimed,
    claiming_a_size,
    print_without_newline_until,
    raise_rebuild_exits,
    raise_rebuild_interrupts,
    raise_refusing_attributes,
)

import belated

LIBRARIES = pytest.mark.parametrize("lib", [dask, belated], ids=["dask", "belated"])


def reads_its_own_attribute(k):
    def add(x):
        return x + add.k

    add.k = k
    return add


@LIBRARIES
def test_pure_calls_of_functions_told_apart_only_by_their_attributes_are_not_merged(lib):
    first, second = reads_its_own_attribute(1), reads_its_own_attribute(2)
    a, b = lib.delayed(first, pure=True)(10), lib.delayed(second, pure=True)(10)
    assert a.key != b.key
    assert lib.compute(a, b, scheduler="sync") == (first(10), second(10)) == (11, 12)
    same = reads_its_own_attribute(1)
    assert lib.delayed(same, pure=True)(10).key == lib.delayed(reads_its_own_attribute(1), pure=True)(10).key


FORKING_TASKS = textwrap.dedent(
    """
    import os, sys
    import belated

    def forks(child_ends):
        pid = os.fork()
        if pid == 0:
            if child_ends == "raising":
                raise ValueError("raised in the child")
            if child_ends == "exiting":
                # A graph of the child's own first: its tasks do not end the child.
                sys.exit(belated.delayed(sum)([1, 3]).compute())
            return "returned in the child"
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status)

    ends = ["returning", "raising", "exiting"]
    if sys.argv[1] == "eager":
        print([forks(end) for end in ends])
        sys.exit()
    if sys.argv[1] == "belated.get":
        keys = [f"forks-{end}" for end in ends]
        print(list(belated.get({key: (forks, end) for key, end in zip(keys, ends)}, keys)))
    else:
        scheduler = sys.argv[1]
        if scheduler == "in-process client":
            scheduler = belated.Client(processes=False, dashboard_address=None)
        elif scheduler == "client":
            scheduler = belated.Client(n_workers=1, threads_per_worker=1, dashboard_address=None)
        print(list(belated.compute(*[belated.delayed(forks)(end) for end in ends], scheduler=scheduler)))
    print(belated.delayed(sum)([1, 2]).compute())
    """
)


@pytest.mark.parametrize("scheduler", ["threads", "in-process client", "belated.get", "processes", "client"])
def test_a_child_forked_by_a_task_ends_as_eager_pythons_does(scheduler):
    # On a thread, the child is a copy of the worker thread alone: back in the engine, it waited for
    # the pool's other threads forever, and so did the task waiting for it (dask's threads hang there
    # too). In a worker process it must not answer for the worker: it ended, with status 0 whatever
    # its code did.
    eager = subprocess.run(
        [sys.executable, "-c", FORKING_TASKS, "eager"], capture_output=True, text=True, timeout=60
    )
    # Eager Python's child goes on with the program: its own line comes first, then its parent's.
    assert eager.stdout.splitlines()[-1] == "[0, 1, 4]"
    finished = subprocess.run(
        [sys.executable, "-c", FORKING_TASKS, scheduler], capture_output=True, text=True, timeout=120
    )
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.splitlines() == ["[0, 1, 4]", "3"]
    assert finished.stderr.count("ValueError: raised in the child") == 1


@pytest.fixture(params=["processes", "client"])
def on_workers(request):
    """Computes on worker processes: of the processes scheduler, or of a two-worker local cluster."""
    if request.param == "processes":
        yield lambda *tasks, **options: belated.compute(*tasks, scheduler="processes", **options)
        return
    with belated.Client(
        n_workers=2, threads_per_worker=1, dashboard_address=None, set_as_default=False
    ) as client:
        yield lambda *tasks, **options: belated.compute(*tasks, scheduler=client, **options)


@pytest.mark.parametrize(
    ("task", "kind"),
    [(raise_rebuild_interrupts, RebuildInterrupts), (raise_rebuild_exits, RebuildExits)],
    ids=["keyboard-interrupt", "system-exit"],
)
def test_an_exception_whose_rebuild_raises_a_base_exception_arrives_as_remote_error(on_workers, task, kind):
    # dask's processes scheduler raises what the rebuild raised: a KeyboardInterrupt no one pressed,
    # a SystemExit no one called, in place of the task's failure.
    with pytest.raises(belated.RemoteError, match="the real failure") as caught:
        on_workers(belated.delayed(task)(), retries=0)
    assert caught.value.type_name == f"{kind.__module__}.{kind.__qualname__}"
    assert on_workers(belated.delayed(abs)(-3)) == (3,)


def takes_arguments(how):
    """Functions of one name whose code differs only in how it takes its arguments."""
    if how == "star":

        def passed(*a):
            return a

    elif how == "keyword-only":

        def passed(a, *, b):
            return a

    elif how == "two":

        def passed(a, b):
            return a

    else:

        def passed(a):
            return a

    return passed


@pytest.mark.parametrize(
    ("first", "second", "call"),
    [
        (lambda *a: a, lambda a: a, (1,)),
        (takes_arguments("star"), takes_arguments("one"), (1,)),
        (takes_arguments("keyword-only"), takes_arguments("two"), (1, 3)),
    ],
    ids=["lambdas", "closures", "keyword-only"],
)
@LIBRARIES
def test_pure_calls_of_functions_taking_their_arguments_differently_are_not_merged(lib, first, second, call):
    # The same instructions read the same local: only the code's signature tells them apart.
    def eager(function):
        try:
            return ("returned", function(*call))
        except TypeError as error:
            return ("raised", str(error))

    def computed(function):
        try:
            return ("returned", lib.delayed(function, pure=True)(*call).compute(scheduler="sync"))
        except TypeError as error:
            return ("raised", str(error))

    a, b = lib.delayed(first, pure=True)(*call), lib.delayed(second, pure=True)(*call)
    assert a.key != b.key
    assert [computed(first), computed(second)] == [eager(first), eager(second)]
    assert eager(first) != eager(second)
    again = takes_arguments("star")
    assert lib.delayed(again, pure=True)(1).key == lib.delayed(takes_arguments("star"), pure=True)(1).key


SCRIPT_COMPUTING_IN_A_TASK = textwrap.dedent(
    """
    import sys
    import {lib} as dask

    def inner(x):
        return dask.delayed(abs)(x).compute(scheduler="sync") + dask.tokenize.__name__.count("tokenize")

    if __name__ == "__main__":
        if sys.argv[1] == "client":
            dask.Client(n_workers=1, threads_per_worker=1, dashboard_address=None)
            scheduler = None
        else:
            scheduler = sys.argv[1]
        print(dask.compute(dask.delayed(inner)(-3), scheduler=scheduler))
    """
)


@pytest.mark.parametrize("scheduler", ["processes", "client"])
def test_a_script_function_reading_belated_delayed_runs_in_worker_processes_as_on_dask(tmp_path, scheduler):
    # Sent by value, the function carries the modules its code names: belated.delayed and
    # belated.tokenize are modules of a subclass in sys.modules, which could not be pickled.
    results = {}
    for lib in ("dask", "belated"):
        if lib == "dask" and scheduler == "client":
            continue
        script = tmp_path / f"{lib}_script.py"
        script.write_text(SCRIPT_COMPUTING_IN_A_TASK.format(lib=lib))
        finished = subprocess.run(
            [sys.executable, str(script), scheduler], capture_output=True, text=True, timeout=120
        )
        assert finished.returncode == 0, finished.stderr
        results[lib] = finished.stdout.strip()
    assert results["belated"] == "(4,)"
    assert results.get("dask", "(4,)") == results["belated"]


@pytest.mark.parametrize("claim", [-1, 2**64 + 5, 10**30, KeyboardInterrupt("sizing"), SystemExit(3)])
def test_a_result_whose_nbytes_is_no_size_is_kept_in_a_worker_and_used_as_on_dask(on_workers, claim):
    # Workers size what they keep from its nbytes, which the parent read as an unsigned 64-bit number:
    # the task failed with an OverflowError, or the property's own exception, though it succeeded.
    made = belated.delayed(claiming_a_size)(claim)
    expected = dask.compute(
        dask.delayed(claimed)(dask.delayed(claiming_a_size)(claim)), scheduler="processes"
    )
    assert on_workers(belated.delayed(claimed)(made), retries=0) == expected == (claimed(ClaimsASize(claim)),)
    assert on_workers(belated.delayed(abs)(-3)) == (3,)


@pytest.mark.parametrize("scheduler", ["threads", "sync", "processes", "in-process client", "client"])
@pytest.mark.parametrize("level", [logging.WARNING, logging.DEBUG])
def test_an_exception_refusing_attributes_is_raised_as_itself_as_in_eager_python(
    scheduler, level, in_process, local_cluster
):
    # Passing through a contextlib.contextmanager set its __traceback__, which raised the exception's
    # AttributeError in its place (dask's schedulers do the same; eager Python raises the task's own).
    with pytest.raises(RefusesAttributes, match="the real failure"):
        raise_refusing_attributes()
    chosen = {"in-process client": in_process, "client": local_cluster}.get(scheduler, scheduler)
    logger = logging.getLogger("belated")
    before = logger.level
    logger.setLevel(level)
    try:
        # From a worker process, an exception whose rebuild fails may come as a RemoteError naming it.
        arrives_as = RefusesAttributes if scheduler in ("threads", "sync", "in-process client") else Exception
        with pytest.raises(arrives_as, match="the real failure") as caught:
            belated.delayed(raise_refusing_attributes)().compute(scheduler=chosen)
        assert not isinstance(caught.value, AttributeError)
    finally:
        logger.setLevel(before)
    assert belated.delayed(abs)(-3).compute(scheduler=chosen) == 3


def test_output_without_a_newline_is_forwarded_while_the_task_still_runs(on_workers, capfd, tmp_path):
    # Eager Python's output reaches fd 1 as it is written; a worker's was held until its line ended,
    # however long that took and however much memory the line took in this process.
    gate = tmp_path / "gate"
    size = 1 << 20
    with concurrent.futures.ThreadPoolExecutor(1) as running:
        computing = running.submit(on_workers, belated.delayed(print_without_newline_until)(size, str(gate)))
        seen = ""
        deadline = time.monotonic() + 30
        while seen.count("x") < size and time.monotonic() < deadline and not computing.done():
            seen += capfd.readouterr().out
            time.sleep(0.05)
        printed_while_running = seen.count("x")
        gate.touch()
        assert computing.result(timeout=60) == (True,)
    assert printed_while_running == size
